using System.Diagnostics;
using System.Net.Sockets;
using DriverIsolation.Cli.Control;

namespace DriverIsolation.Tests;

public sealed class ControlPipeTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("drviso-ctl-test-").FullName;
    private readonly List<Process> _processes = [];

    [Fact]
    public async Task Serving_IsThePipesSomethingListensOn_NotOnesLeftByAKilledKernelWhosePidWasGivenAgain_NorDeadOnes()
    {
        var kernel = Start("sleep", "600");
        var newcomer = Start("sleep", "600");
        var gone = Start("true");
        await gone.WaitForExitAsync().Bounded();

        // A serving kernel listens on its pipe; a killed kernel's socket file stays behind with
        // nothing listening, and its PID may since have been given to another process.
        using var listening = Listen(kernel.Id);
        LeaveBehind(newcomer.Id);
        LeaveBehind(gone.Id);
        File.WriteAllText(Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}not-a-pid"), "");

        Assert.True(File.Exists(PathFor(newcomer.Id)));
        Assert.Equal([kernel.Id], ControlPipe.Serving(_directory));
    }

    public void Dispose()
    {
        foreach (var process in _processes)
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
            }

            process.Dispose();
        }

        Directory.Delete(_directory, recursive: true);
    }

    private Process Start(string file, params string[] arguments)
    {
        var process = Process.Start(new ProcessStartInfo(file, arguments)) ?? throw new InvalidOperationException($"cannot start {file}");
        _processes.Add(process);
        return process;
    }

    private string PathFor(int pid) => Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}{pid}");

    private Socket Listen(int pid, string? path = null)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(path ?? PathFor(pid)));
        socket.Listen();
        return socket;
    }

    /// <summary>A socket file nothing listens on, as a killed kernel leaves it (a socket closed
    /// here would remove its file: it is moved away from under the socket first).</summary>
    private void LeaveBehind(int pid)
    {
        var bound = Path.Combine(_directory, $"bound-{pid}");
        using var socket = Listen(pid, bound);
        File.Move(bound, PathFor(pid));
    }
}
