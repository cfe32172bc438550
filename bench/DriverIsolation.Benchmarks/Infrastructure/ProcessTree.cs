using System.Diagnostics;

namespace DriverIsolation.Benchmarks.Infrastructure;

/// <summary>Ends the processes a benchmark started, with their children, whatever state they
/// are in: a benchmark process must not leave hosts behind on a shared machine.</summary>
internal static class ProcessTree
{
    public static void Kill(Process process)
    {
        try
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit(TimeSpan.FromSeconds(10));
            }
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
    }

    /// <summary>Kills each of these driver hosts still alive. An id whose process is no longer a
    /// drvhost (gone, and the id reused) is left alone, as is this process.</summary>
    public static void KillDriverHosts(IEnumerable<int> processIds)
    {
        foreach (var id in processIds.Distinct())
        {
            if (id == Environment.ProcessId || id <= 0 || !IsDriverHost(id))
            {
                continue;
            }

            try
            {
                using var process = Process.GetProcessById(id);
                Kill(process);
            }
            catch (ArgumentException)
            {
                // No such process any more.
            }
        }
    }

    private static bool IsDriverHost(int id)
    {
        var commandLine = $"/proc/{id}/cmdline";
        if (!OperatingSystem.IsLinux())
        {
            return true;
        }

        try
        {
            return File.ReadAllText(commandLine).Contains("drvhost", StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }
}
