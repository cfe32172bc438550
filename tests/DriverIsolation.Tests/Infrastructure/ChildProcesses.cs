using System.Diagnostics;

namespace DriverIsolation.Tests;

/// <summary>Processes a test starts; each is killed with its tree (if still running) and reaped
/// when the test is disposed.</summary>
internal sealed class ChildProcesses : IDisposable
{
    private readonly List<Process> _processes = [];

    public Process Start(string file, params string[] arguments)
    {
        var process = Process.Start(new ProcessStartInfo(file, arguments)) ?? throw new InvalidOperationException($"cannot start {file}");
        _processes.Add(process);
        return process;
    }

    /// <summary>The PID of a process that has run and been reaped: no process has it now.</summary>
    public async Task<int> ExitedPidAsync()
    {
        var process = Start("true");
        await process.WaitForExitAsync().Bounded();
        return process.Id;
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
    }
}
