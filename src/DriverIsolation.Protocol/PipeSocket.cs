using System.IO.Pipes;
using System.Net.Sockets;

namespace DriverIsolation.Protocol;

/// <summary>
/// On Linux a named pipe is a Unix-domain socket. A connection does its reads and writes through
/// a <see cref="Socket"/> on the pipe's descriptor rather than through the <see cref="PipeStream"/>:
/// the socket's asynchronous receives and sends reuse one operation object each, where the pipe
/// stream makes a new one for every read that has to wait (about 150 bytes per message). The pipe
/// stream keeps the descriptor and closes it.
/// </summary>
internal static class PipeSocket
{
    /// <summary>The stream to read and write <paramref name="stream"/> through, and the socket
    /// under it if there is one (shut down and disposed before the pipe).</summary>
    public static (Stream Io, Socket? Socket) Open(Stream stream)
    {
        if (OperatingSystem.IsWindows() || stream is not (NamedPipeServerStream or NamedPipeClientStream) || !((PipeStream)stream).IsConnected)
        {
            return (stream, null);
        }

        Socket? socket = null;
        try
        {
            var pipe = (PipeStream)stream;
            socket = new Socket(new SafeSocketHandle(pipe.SafePipeHandle.DangerousGetHandle(), ownsHandle: false));
            if (socket.AddressFamily != AddressFamily.Unix)
            {
                socket.Dispose();
                return (stream, null);
            }

            return (new NetworkStream(socket, ownsSocket: false), socket);
        }
        catch (Exception ex) when (ex is SocketException or IOException or InvalidOperationException or PlatformNotSupportedException or ArgumentException)
        {
            // Not a socket after all: the pipe stream does the work.
            socket?.Dispose();
            return (stream, null);
        }
    }

    /// <summary>Ends the socket's use of the descriptor: a read still waiting on it returns.</summary>
    public static void Close(Socket? socket)
    {
        if (socket is null)
        {
            return;
        }

        try
        {
            socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
            // The peer is gone already.
        }
        catch (ObjectDisposedException)
        {
            return;
        }

        socket.Dispose();
    }
}
