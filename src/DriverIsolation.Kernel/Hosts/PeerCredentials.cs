using System.IO.Pipes;
using System.Net.Sockets;

namespace DriverIsolation.Kernel;

/// <summary>
/// Who is on the other end of a pipe, according to the operating system rather than to what the
/// peer says: on Linux a named pipe is a Unix domain socket, and SO_PEERCRED gives the PID of the
/// process that connected. Null where the OS gives no such answer.
/// </summary>
internal static class PeerCredentials
{
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;

    public static int? TryGetProcessId(NamedPipeServerStream pipe)
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        try
        {
            // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
            using var socket = new Socket(new SafeSocketHandle(pipe.SafePipeHandle.DangerousGetHandle(), ownsHandle: false));
            Span<byte> credentials = stackalloc byte[12];
            return socket.GetRawSocketOption(SolSocket, SoPeerCred, credentials) == 12
                ? BitConverter.ToInt32(credentials)
                : null;
        }
        catch (SocketException)
        {
            return null;
        }
    }
}
