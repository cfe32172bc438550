using System.IO.Pipes;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace DriverIsolation.Protocol;

/// <summary>
/// On Linux a named pipe is a Unix-domain socket. A connection does its reads and writes through
/// a <see cref="Socket"/> on the pipe's descriptor rather than through the <see cref="PipeStream"/>:
/// the socket's asynchronous receives and sends reuse one operation object each, where the pipe
/// stream makes a new one for every read that has to wait (about 150 bytes per message). The
/// socket has a descriptor of its own (a duplicate of the pipe's), so each object closes only
/// what it owns, and an operation in flight on the socket keeps its descriptor open.
/// </summary>
internal static partial class PipeSocket
{
    /// <summary>The stream to read and write <paramref name="stream"/> through, and the socket
    /// under it if there is one (shut down and disposed before the pipe).</summary>
    public static (Stream Io, Socket? Socket) Open(Stream stream)
    {
        if (OperatingSystem.IsWindows() || stream is not (NamedPipeServerStream or NamedPipeClientStream) || !((PipeStream)stream).IsConnected)
        {
            return (stream, null);
        }

        var pipe = (PipeStream)stream;
        var own = OperatingSystem.IsLinux() ? Fcntl((int)pipe.SafePipeHandle.DangerousGetHandle(), DupCloseOnExec, 0) : -1;
        if (own < 0)
        {
            return (stream, null);
        }

        var handle = new SafeSocketHandle(own, ownsHandle: true);
        try
        {
            var socket = new Socket(handle);
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
            handle.Dispose();
            return (stream, null);
        }
    }

    /// <summary>F_DUPFD_CLOEXEC (Linux): a new descriptor for the same socket, not inherited by
    /// the driver hosts this process starts.</summary>
    private const int DupCloseOnExec = 1030;

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int descriptor, int command, int argument);

    /// <summary>Ends the connection through the socket (a read still waiting on it returns) and
    /// closes the socket's descriptor.</summary>
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
