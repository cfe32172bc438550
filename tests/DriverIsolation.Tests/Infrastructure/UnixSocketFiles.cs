using System.Net.Sockets;

namespace DriverIsolation.Tests;

/// <summary>Socket files as a named pipe's server makes them on Unix.</summary>
internal static class UnixSocketFiles
{
    /// <summary>A Unix stream socket bound at <paramref name="path"/>, listening if asked (its
    /// file is deleted when it is disposed).</summary>
    public static Socket Bind(string path, bool listen)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(path));
        if (listen)
        {
            socket.Listen();
        }

        return socket;
    }

    /// <summary>The socket file a killed process leaves at <paramref name="path"/>: bound, never
    /// unlinked (a socket disposed here deletes its file, so the file is moved away meanwhile).</summary>
    public static void LeaveBehind(string path)
    {
        var aside = path + ".aside";
        using (Bind(path, listen: true))
        {
            File.Move(path, aside);
        }

        File.Move(aside, path);
    }
}
