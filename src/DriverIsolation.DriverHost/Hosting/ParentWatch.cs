using System.Diagnostics;

namespace DriverIsolation.DriverHost;

/// <summary>
/// Notices that the kernel process is gone even if the pipe is not (a kernel that hangs with the
/// pipe open is the heartbeat's business, not this). Checks that the PID is alive and, when the
/// kernel is the direct parent, that this process has not been re-parented: a dead parent left
/// as a zombie still answers to its PID.
/// </summary>
internal static class ParentWatch
{
    public static async Task WaitForParentExitAsync(int parentPid, TimeSpan period, CancellationToken cancellationToken)
    {
        var directParent = ReadParentPid() == parentPid;
        using var timer = new PeriodicTimer(period);
        while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
        {
            if (!IsAlive(parentPid) || (directParent && ReadParentPid() != parentPid))
            {
                return;
            }
        }
    }

    private static bool IsAlive(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    /// <summary>The parent PID from /proc/self/stat (field 4, after the parenthesised name, which
    /// may itself contain spaces and parentheses). -1 where /proc is not available.</summary>
    private static int ReadParentPid()
    {
        try
        {
            var stat = File.ReadAllText("/proc/self/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return int.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return -1;
        }
        catch (UnauthorizedAccessException)
        {
            return -1;
        }
    }
}
