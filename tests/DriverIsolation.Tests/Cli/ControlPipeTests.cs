using System.Diagnostics;
using DriverIsolation.Cli.Control;

namespace DriverIsolation.Tests;

public sealed class ControlPipeTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("drviso-ctl-test-").FullName;
    private readonly List<Process> _processes = [];

    [Fact]
    public async Task Serving_IsThePipesWhoseProcessMadeThem_NotOnesLeftBeforeTheirPidWasGivenAgain_NorDeadOnes()
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

    private void Pipe(int pid, DateTime madeUtc)
    {
        var path = Path.Combine(_directory, $"CoreFxPipe_{ControlPipe.Prefix}{pid}");
        File.WriteAllText(path, "");
        File.SetLastWriteTimeUtc(path, madeUtc);
    }
}
