using System.Diagnostics;
using DriverIsolation.Cli.Control;

namespace DriverIsolation.Tests;

public sealed class ControlPipeTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("drviso-ctl-test-").FullName;
    private readonly ChildProcesses _children = new();

    [Fact]
    public async Task Serving_IsThePipesAProcessListensOn_NotFilesLeftBehindWhateverTheirDatesAndPids()
    {
        var live = Start("sleep", "600");
        var gone = await _children.ExitedPidAsync();

        // A kernel listening on its pipe; a killed kernel's socket file, left behind with the
        // date of now and the PID of a live process (which the start times would have taken for
        // its kernel); a socket still bound but not listening; the file of a dead PID.
        // (Bound by a path written with "//" in it, as a TMPDIR ending in '/' gives: the socket
        // table lists it so.)
        using var serving = UnixSocketFiles.Bind($"{_directory}//CoreFxPipe_{ControlPipe.Prefix}12345", listen: true);
        UnixSocketFiles.LeaveBehind(PathFor(live.Id));
        File.SetLastWriteTimeUtc(PathFor(live.Id), DateTime.UtcNow + TimeSpan.FromMinutes(1));
        using var bound = UnixSocketFiles.Bind(PathFor(23456), listen: false);
        File.WriteAllText(PathFor(gone), "");
        File.WriteAllText(Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}not-a-pid"), "");

        Assert.Equal([12345], ControlPipe.Serving(_directory, File.ReadAllText("/proc/net/unix")));
        Assert.Contains(live.Id, ControlPipe.Serving(_directory, unixSockets: null));
    }

    [Fact]
    public async Task WithoutASocketTable_Serving_IsThePipesWhoseProcessMadeThem_NotOnesLeftBeforeTheirPidWasGivenAgain_NorDeadOnes()
    {
        var kernel = Start("sleep", "600");
        var newcomer = Start("sleep", "600");
        var gone = await _children.ExitedPidAsync();

        // A kernel's own pipe is made after it starts; a killed kernel's pipe stays behind, and its
        // PID may since have been given to a process that started long after it.
        Pipe(kernel.Id, DateTime.UtcNow);
        Pipe(newcomer.Id, DateTime.UtcNow - TimeSpan.FromHours(1));
        Pipe(gone, DateTime.UtcNow);
        File.WriteAllText(Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}not-a-pid"), "");

        Assert.Equal([kernel.Id], ControlPipe.Serving(_directory, unixSockets: null));
    }

    public void Dispose()
    {
        _children.Dispose();
        Directory.Delete(_directory, recursive: true);
    }

    private Process Start(string file, params string[] arguments) => _children.Start(file, arguments);

    private string PathFor(int pid) => Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}{pid}");

    private void Pipe(int pid, DateTime madeUtc)
    {
        File.WriteAllText(PathFor(pid), "");
        File.SetLastWriteTimeUtc(PathFor(pid), madeUtc);
    }
}
