using System.Diagnostics;
using DriverIsolation.Cli.Control;

namespace DriverIsolation.Tests;

public sealed class ControlPipeTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("drviso-ctl-test-").FullName;
    private readonly List<Process> _processes = [];

    [Fact]
    public async Task Serving_IsThePipesAProcessListensOn_NotFilesLeftBehindWhateverTheirDatesAndPids()
    {
        var live = Start("sleep", "600");
        var gone = Start("true");
        await gone.WaitForExitAsync().Bounded();

        // A kernel listening on its pipe; a killed kernel's socket file, left behind with the
        // date of now and the PID of a live process (which the start times would have taken for
        // its kernel); a socket still bound but not listening; the file of a dead PID.
        using var serving = Socket(12345, listen: true);
        LeftBehind(live.Id);
        File.SetLastWriteTimeUtc(PathFor(live.Id), DateTime.UtcNow + TimeSpan.FromMinutes(1));
        using var bound = Socket(23456, listen: false);
        File.WriteAllText(PathFor(gone.Id), "");
        File.WriteAllText(Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}not-a-pid"), "");

        Assert.Equal([12345], ControlPipe.Serving(_directory, File.ReadAllText("/proc/net/unix")));
        Assert.Contains(live.Id, ControlPipe.Serving(_directory, unixSockets: null));
    }

    [Fact]
    public async Task RemoveLeftovers_DeletesOnlyPipesOfDeadPidsThatNoOneListensOn()
    {
        var live = Start("sleep", "600");
        var gone = Start("true");
        await gone.WaitForExitAsync().Bounded();
        var goneToo = Start("true");
        await goneToo.WaitForExitAsync().Bounded();

        // Kept: a pipe listened on (its PID dead or not), one bound by a live process that does
        // not listen yet (a kernel starting), a file that names no PID. Deleted: a dead kernel's
        // socket file and a plain file with a dead PID.
        using var serving = Socket(gone.Id, listen: true);
        using var starting = Socket(live.Id, listen: false);
        LeftBehind(goneToo.Id);
        var stray = Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}{int.MaxValue}");
        File.WriteAllText(stray, "");
        var notAPid = Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}not-a-pid");
        File.WriteAllText(notAPid, "");

        Assert.Equal(0, ControlPipe.RemoveLeftovers(_directory, unixSockets: null));
        Assert.Equal(2, ControlPipe.RemoveLeftovers(_directory, File.ReadAllText("/proc/net/unix")));
        Assert.Equal(new[] { PathFor(gone.Id), PathFor(live.Id), notAPid }.Order(StringComparer.Ordinal).ToArray(),
            Directory.EnumerateFiles(_directory).Order(StringComparer.Ordinal).ToArray());
    }

    [Fact]
    public void ListeningPaths_AreTheBoundPathsOfSocketsFlaggedAsAccepting_SpacesKept()
    {
        const string table = """
            Num       RefCount Protocol Flags    Type St Inode Path
            00000000e62b690d: 00000003 00000000 00000000 0001 03  1141
            000000006b2f7311: 00000002 00000000 00010000 0001 01 5020988 /tmp/CoreFxPipe_drviso-ctl-42
            00000000d59f93b8: 00000002 00000000 00000000 0001 01 5020989 /tmp/CoreFxPipe_drviso-ctl-43
            00000000aa2f7311: 00000002 00000000 00010000 0001 01 5020990 /tmp/a dir/CoreFxPipe_drviso-ctl-44
            00000000bb2f7311: 00000002 00000000 00010000 0001 01 5020991 @abstract-name
            """;

        Assert.Equal(["/tmp/CoreFxPipe_drviso-ctl-42", "/tmp/a dir/CoreFxPipe_drviso-ctl-44"],
            ControlPipe.ListeningPaths(table.ReplaceLineEndings("\n")).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task WithoutASocketTable_Serving_IsThePipesWhoseProcessMadeThem_NotOnesLeftBeforeTheirPidWasGivenAgain_NorDeadOnes()
    {
        var kernel = Start("sleep", "600");
        var newcomer = Start("sleep", "600");
        var gone = Start("true");
        await gone.WaitForExitAsync().Bounded();

        // A kernel's own pipe is made after it starts; a killed kernel's pipe stays behind, and its
        // PID may since have been given to a process that started long after it.
        Pipe(kernel.Id, DateTime.UtcNow);
        Pipe(newcomer.Id, DateTime.UtcNow - TimeSpan.FromHours(1));
        Pipe(gone.Id, DateTime.UtcNow);
        File.WriteAllText(Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}not-a-pid"), "");

        Assert.Equal([kernel.Id], ControlPipe.Serving(_directory, unixSockets: null));
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

    private void Pipe(int pid, DateTime madeUtc)
    {
        File.WriteAllText(PathFor(pid), "");
        File.SetLastWriteTimeUtc(PathFor(pid), madeUtc);
    }

    /// <summary>The socket file a killed process leaves: bound, never unlinked (a socket
    /// disposed here deletes its file, so the file is moved away while it is).</summary>
    private void LeftBehind(int pid)
    {
        var aside = PathFor(pid) + ".aside";
        using (Socket(pid, listen: true))
        {
            File.Move(PathFor(pid), aside);
        }

        File.Move(aside, PathFor(pid));
    }

    /// <summary>A Unix socket bound at the pipe path of <paramref name="pid"/> (its file stays
    /// when it is closed, as a killed kernel's does).</summary>
    private System.Net.Sockets.Socket Socket(int pid, bool listen)
    {
        var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        socket.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(PathFor(pid)));
        if (listen)
        {
            socket.Listen();
        }

        return socket;
    }
}
