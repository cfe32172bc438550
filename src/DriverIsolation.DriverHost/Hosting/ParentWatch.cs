using System.Diagnostics;
using System.Runtime.InteropServices;

namespace DriverIsolation.DriverHost;

/// <summary>
/// Notices that the kernel process is gone even if the pipe is not (a kernel that hangs with the
/// pipe open is the heartbeat's business, not this). Checks that the PID is alive and, when the
/// kernel is the direct parent, that this process has not been re-parented: a dead parent left
/// as a zombie still answers to its PID. On Unix each check is two system calls (<c>kill(pid, 0)</c>,
/// <c>getppid()</c>): every host does it four times a second for its whole life, so it must cost
/// next to nothing (opening the parent as a <see cref="Process"/> and reading /proc each time
/// cost an idle host 2 % of a CPU).
/// </summary>
internal static partial class ParentWatch
{
    private const int EPerm = 1;

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
        if (!OperatingSystem.IsWindows())
        {
            // Signal 0 checks only that the process exists (EPERM: it does, and is not ours to signal).
            return Kill(pid, 0) == 0 || Marshal.GetLastPInvokeError() == EPerm;
        }

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

    /// <summary>This process's parent PID (it changes when the parent dies and the process is
    /// re-parented). -1 on Windows, which has no such notion.</summary>
    private static int ReadParentPid() => OperatingSystem.IsWindows() ? -1 : GetParentPid();

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "getppid")]
    private static partial int GetParentPid();
}
