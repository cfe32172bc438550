using System.Diagnostics;
using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Tests;

public sealed class LeftoverFilesTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("drviso-leftover-test-").FullName;
    private readonly List<Process> _processes = [];

    [Fact]
    public async Task Remove_TakesTheFilesOfDeadMakersThatNothingUses_AndNothingElse()
    {
        var live = Start("sleep", "600");
        var dead = Start("true");
        await dead.WaitForExitAsync().Bounded();
        var d = dead.Id;

        // Left by a killed kernel (or host): deleted.
        string[] leftovers =
        [
            Make($"drviso-phys-{d}-0123abcd"), Make($"drviso-ring-{d}-4567ef"), Make($"drviso-chaos-{d}-RamDisk0"),
            Make($"CoreFxPipe_drvhost-rehearsal-{d}-89ab"), Make($"CoreFxPipe_drviso-bench-{d}-cdef"),
        ];
        UnixSocketFiles.LeaveBehind(Path.Combine(_directory, $"CoreFxPipe_drviso-{d}-0f0f"));
        UnixSocketFiles.LeaveBehind(Path.Combine(_directory, $"CoreFxPipe_drviso-ctl-{d}"));

        // Kept: physical memory a kernel has mapped, though its name's PID is dead here (a kernel
        // in another PID namespace); a pipe listened on; a live process's files, in use or not;
        // names that are not ours or carry no PID.
        using var mapped = new PhysicalMemory(64 * PhysicalMemory.FrameSize, 4 * PhysicalMemory.FrameSize, Path.Combine(_directory, $"drviso-phys-{d}-live"));
        using var listening = UnixSocketFiles.Bind(Path.Combine(_directory, $"CoreFxPipe_drviso-ctl-{d + 1_000_000}"), listen: true);
        using var starting = UnixSocketFiles.Bind(Path.Combine(_directory, $"CoreFxPipe_drviso-{live.Id}-1111"), listen: false);
        string[] kept =
        [
            mapped.Path, Path.Combine(_directory, $"CoreFxPipe_drviso-ctl-{d + 1_000_000}"), Path.Combine(_directory, $"CoreFxPipe_drviso-{live.Id}-1111"),
            Make($"drviso-phys-{live.Id}-2222"), Make($"CoreFxPipe_drviso-ctl-{live.Id}"),
            Make("drviso-test-0123abcd"), Make("CoreFxPipe_drviso-ctl-not-a-pid"), Make($"drviso-phys--{d}"), Make($"other-{d}-3333"),
        ];

        var isProcess = (int pid) => pid != d + 1_000_000 && LeftoverFiles.IsProcess(pid);
        Assert.Equal(leftovers.Length + 2, LeftoverFiles.Remove([_directory], File.ReadAllText("/proc/net/unix"), isProcess));
        Assert.Equal(kept.Order(StringComparer.Ordinal), Directory.EnumerateFiles(_directory).Order(StringComparer.Ordinal));
        Assert.Equal(0, LeftoverFiles.Remove([_directory], File.ReadAllText("/proc/net/unix"), isProcess));
    }

    [Fact]
    public void Remove_WithoutASocketTable_StillKeepsWhatALiveProcessOrAMappingHolds()
    {
        using var mapped = new PhysicalMemory(64 * PhysicalMemory.FrameSize, 4 * PhysicalMemory.FrameSize, Path.Combine(_directory, "drviso-phys-999999999-live"));
        var mine = Make($"CoreFxPipe_drviso-ctl-{Environment.ProcessId}");
        var leftover = Make("drviso-phys-999999999-gone");

        Assert.Equal(1, LeftoverFiles.Remove([_directory], unixSockets: null, LeftoverFiles.IsProcess));
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

    private string Make(string name)
    {
        var path = Path.Combine(_directory, name);
        File.WriteAllText(path, "");
        return path;
    }
}
