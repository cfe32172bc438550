using System.Diagnostics;
using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Tests;

public sealed class LeftoverFilesTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("drviso-leftover-test-").FullName;
    private readonly ChildProcesses _children = new();

    [Fact]
    public async Task Remove_TakesTheFilesOfDeadMakersThatNothingUses_AndNothingElse()
    {
        var live = Start("sleep", "600");
        var d = await _children.ExitedPidAsync();

        // Left by a killed kernel (or host): deleted.
        string[] leftovers =
        [
            Make($"drviso-phys-{d}-0123abcd", 8192), Make($"drviso-ring-{d}-4567ef", 4096), Make($"drviso-chaos-{d}-RamDisk0", 512),
            Make($"CoreFxPipe_drvhost-rehearsal-{d}-89ab"), Make($"CoreFxPipe_drviso-bench-{d}-cdef"),
            Path.Combine(_directory, $"CoreFxPipe_drviso-{d}-0f0f"), Path.Combine(_directory, $"CoreFxPipe_drviso-ctl-{d}"),
        ];
        UnixSocketFiles.LeaveBehind(leftovers[^2]);
        UnixSocketFiles.LeaveBehind(leftovers[^1]);

        // Kept: physical memory a kernel has mapped, though its name's PID is dead here (a kernel
        // in another PID namespace); a pipe listened on; a live process's files, in use or not;
        // a dead PID's file changed under a minute ago; a FIFO and a symbolic link with a dead
        // PID's name (a FIFO opened would wait for a writer); names not ours or without a PID.
        using var mapped = new PhysicalMemory(64 * PhysicalMemory.FrameSize, 4 * PhysicalMemory.FrameSize, Path.Combine(_directory, $"drviso-phys-{d}-live"));
        var listened = Path.Combine(_directory, $"CoreFxPipe_drviso-ctl-{d + 1_000_000}");
        using var listening = UnixSocketFiles.Bind(listened, listen: true);
        var starting = Path.Combine(_directory, $"CoreFxPipe_drviso-{live.Id}-1111");
        using var bound = UnixSocketFiles.Bind(starting, listen: false);
        var recent = Make($"drviso-phys-{d}-recent", 4096);
        var fifo = Path.Combine(_directory, $"drviso-phys-{d}-fifo");
        await Start("mkfifo", fifo).WaitForExitAsync().Bounded();
        var target = Make("target", 4096);
        var link = Path.Combine(_directory, $"drviso-phys-{d}-link");
        File.CreateSymbolicLink(link, target);
        string[] kept =
        [
            mapped.Path, listened, starting, recent, fifo, target, link,
            Make($"drviso-phys-{live.Id}-2222", 4096), Make($"CoreFxPipe_drviso-ctl-{live.Id}"),
            Make("drviso-test-0123abcd", 4096), Make("CoreFxPipe_drviso-ctl-not-a-pid"), Make($"drviso-phys--{d}", 4096), Make($"other-{d}-3333", 4096),
        ];

        // "Now" is two minutes on; the recent file was changed then.
        var now = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        File.SetLastWriteTimeUtc(recent, now);
        var isProcess = (int pid) => pid != d + 1_000_000 && LeftoverFiles.IsProcess(pid);
        var removed = await Task.Run(() => LeftoverFiles.Remove([_directory, _directory + "/"], File.ReadAllText("/proc/net/unix"), isProcess, now)).Bounded();

        Assert.Equal((leftovers.Length, 8192L + 4096 + 512), removed);
        Assert.Equal(kept.Order(StringComparer.Ordinal), Directory.EnumerateFileSystemEntries(_directory).Order(StringComparer.Ordinal));
        Assert.Equal((0, 0L), LeftoverFiles.Remove([_directory], File.ReadAllText("/proc/net/unix"), isProcess, now));
    }

    [Fact]
    public void Remove_WithoutTheListenersInTheSocketTable_KeepsAControlPipeThatAnswers()
    {
        // Sockets of another network namespace are not in this one's table: a control pipe that
        // takes a connection is kept; one that refuses, deleted. A host pipe is not asked (a
        // stranger connecting to it could pass for its host): after a minute it is not needed.
        var answering = Path.Combine(_directory, "CoreFxPipe_drviso-ctl-999999991");
        using var control = UnixSocketFiles.Bind(answering, listen: true);
        var refusing = Path.Combine(_directory, "CoreFxPipe_drviso-ctl-999999992");
        UnixSocketFiles.LeaveBehind(refusing);
        var hostPipe = Path.Combine(_directory, "CoreFxPipe_drviso-999999993-abcd");
        using var host = UnixSocketFiles.Bind(hostPipe, listen: true);
        const string onlyTheHeader = "Num       RefCount Protocol Flags    Type St Inode Path\n";

        var removed = LeftoverFiles.Remove([_directory], onlyTheHeader, LeftoverFiles.IsProcess, DateTime.UtcNow + TimeSpan.FromMinutes(2));

        Assert.Equal((2, 0L), removed);
        Assert.Equal([answering], Directory.EnumerateFileSystemEntries(_directory));
    }

    [Fact]
    public void Remove_WithoutASocketTable_StillKeepsWhatALiveProcessOrAMappingHolds()
    {
        using var mapped = new PhysicalMemory(64 * PhysicalMemory.FrameSize, 4 * PhysicalMemory.FrameSize, Path.Combine(_directory, "drviso-phys-999999999-live"));
        var mine = Make($"CoreFxPipe_drviso-ctl-{Environment.ProcessId}");
        var leftover = Make("drviso-phys-999999999-gone", 4096);

        Assert.Equal((1, 4096L), LeftoverFiles.Remove([_directory], unixSockets: null, LeftoverFiles.IsProcess, DateTime.UtcNow + TimeSpan.FromMinutes(2)));
        Assert.False(File.Exists(leftover));
        Assert.True(File.Exists(mapped.Path));
        Assert.True(File.Exists(mine));
    }

    [Theory]
    [InlineData("drviso-phys-4242-0123abcd", 4242)]
    [InlineData("drviso-ring-17-ab", 17)]
    [InlineData("drviso-chaos-99-RamDisk0", 99)]
    [InlineData("CoreFxPipe_drviso-ctl-31337", 31337)]
    [InlineData("CoreFxPipe_drviso-8-0f0f", 8)]
    [InlineData("CoreFxPipe_drviso-bench-12-ab", 12)]
    [InlineData("CoreFxPipe_drvhost-rehearsal-5-cd", 5)]
    [InlineData("CoreFxPipe_drviso-ctl-x1", null)]
    [InlineData("CoreFxPipe_drviso-ctl-", null)]
    [InlineData("drviso-phys-0-ab", null)]
    [InlineData("drviso-phys--5-ab", null)]
    [InlineData("drviso-phys-+5-ab", null)]
    [InlineData("drviso-test-0123", null)]
    [InlineData("clr-debug-pipe-26322-in", null)]
    public void MakerOf_IsThePidANameOfOursCarries(string name, int? pid) => Assert.Equal(pid, LeftoverFiles.MakerOf(name));

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
            LeftoverFiles.ListeningPaths(table.ReplaceLineEndings("\n")).Order(StringComparer.Ordinal));
    }

    public void Dispose()
    {
        _children.Dispose();
        Directory.Delete(_directory, recursive: true);
    }

    private Process Start(string file, params string[] arguments) => _children.Start(file, arguments);

    private string Make(string name, int length = 0)
    {
        var path = Path.Combine(_directory, name);
        File.WriteAllBytes(path, new byte[length]);
        return path;
    }
}
