using System.Diagnostics;
using System.Globalization;

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

    /// <summary>
    /// Kills every drvhost still alive that this process started: the ids given, and on Linux
    /// every drvhost whose command line names this process as its parent (a host the kernel was
    /// still starting when it stopped is in no list). An id whose process is not such a drvhost
    /// (gone, and the id reused) is left alone.
    /// </summary>
    public static void KillDriverHosts(IEnumerable<int> processIds)
    {
        foreach (var id in processIds.Concat(ChildHostsOnLinux()).Distinct())
        {
            if (id == Environment.ProcessId || id <= 0 || !IsOurDriverHost(id))
            {
                continue;
            }

            try
            {
                using var process = Process.GetProcessById(id);
                // Not the tree kill: it stops the process before it kills it, and a host left
                // stopped (this process exiting in between) would never notice its parent is gone.
                process.Kill();
                process.WaitForExit(TimeSpan.FromSeconds(10));
            }
            catch (ArgumentException)
            {
                // No such process any more.
            }
            catch (InvalidOperationException)
            {
                // Exited meanwhile.
            }
        }
    }

    private static List<int> ChildHostsOnLinux()
    {
        if (!OperatingSystem.IsLinux())
        {
            return [];
        }

        return Directory.EnumerateDirectories("/proc")
            .Select(path => int.TryParse(Path.GetFileName(path), NumberStyles.None, CultureInfo.InvariantCulture, out var id) ? id : 0)
            .Where(id => id > 0 && IsOurDriverHost(id))
            .ToList();
    }

    // drvhost's command line: dotnet drvhost.dll [--echo] --pipe <name> --parent-pid <pid> ...
    private static bool IsOurDriverHost(int id)
    {
        if (!OperatingSystem.IsLinux())
        {
            return true;
        }

        try
        {
            var arguments = File.ReadAllText($"/proc/{id}/cmdline").Split('\0');
            var parent = Array.IndexOf(arguments, "--parent-pid");
            return arguments.Any(a => a.EndsWith("drvhost.dll", StringComparison.Ordinal))
                && parent >= 0 && parent + 1 < arguments.Length
                && arguments[parent + 1] == Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
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
