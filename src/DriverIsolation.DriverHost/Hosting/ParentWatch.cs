using System.Diagnostics;
using System.Runtime.InteropServices;

namespace DriverIsolation.DriverHost;

/// <summary>
/// Notices that the kernel process is gone even if the pipe is not (a kernel that hangs with the
/// pipe open is the heartbeat's business, not this). Checks that the PID is alive and, when the
/// kernel is the direct parent, that this process has not been re-parented: a dead parent left
/// as a zombie still answers to its PID. On Unix each check is two system calls (<c>kill(pid, 0)</c>,
/// <c>getppid()</c>): every host does it four times a second for its whole life, so it must cost
/// next to nothing (opening the parent as a <see cref="Process"/> and reading /proc each time, on
/// the thread pool, cost an idle host 2 % of a CPU).
/// </summary>
internal static partial class ParentWatch
{
    private const int EPerm = 1;

    /// <summary>Completes when the parent is gone; cancelled with <paramref name="cancellationToken"/>.
    /// The checks run on a thread of their own that sleeps in between, not on timers of the thread
    /// pool: each tick would wake a pool thread, which spins a while before it sleeps again.</summary>
    public static Task WaitForParentExitAsync(int parentPid, TimeSpan period, CancellationToken cancellationToken)
    {
        var gone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var directParent = ReadParentPid() == parentPid;
        var thread = new Thread(() =>
        {
            // The wait ends early when the token is cancelled.
            while (!cancellationToken.WaitHandle.WaitOne(period))
            {
                if (!IsAlive(parentPid) || (directParent && ReadParentPid() != parentPid))
                {
                    gone.TrySetResult();
                    return;
                }
            }

            gone.TrySetCanceled(cancellationToken);
        })
        {
            IsBackground = true,
            Name = "parent watch",
        };
        thread.Start();
        return gone.Task;
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
