using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace DriverIsolation.Kernel;

/// <summary>
/// Kills a host in two steps (Linux): frozen at once, reaped a moment later.
/// <para>
/// SIGKILL ends a process at once, but the OS then tears its address space down in the context
/// of its last thread: for a .NET host, several milliseconds of CPU, and on a kernel that does
/// not preempt its own code, a thread woken meanwhile on that CPU waits up to a scheduler tick.
/// That teardown competed with the restart it made necessary (the new host, the kernel) for the
/// machine's CPUs. So a host to be killed is first stopped (SIGSTOP: like SIGKILL it cannot be
/// caught or ignored, and not one more instruction of it runs), its threads moved to the idle
/// scheduling class, and SIGKILLed <see cref="ReapDelay"/> later (a restart into a warm host
/// takes about 5-12 ms here), or at once when the kernel stops it or this process exits.
/// </para>
/// <para>
/// Where SIGSTOP cannot be sent (not Linux, or refused), the host is SIGKILLed at once.
/// </para>
/// </summary>
internal static partial class DyingProcess
{
    /// <summary>How long a frozen host waits for its SIGKILL (real time: this is the OS's
    /// cleanup, not watchdog logic, and a test's fake clock must not keep a process stopped).</summary>
    public static readonly TimeSpan ReapDelay = TimeSpan.FromMilliseconds(50);

    private const int SigStop = 19;
    private const int SchedIdle = 5;

    // Frozen and not reaped yet: killed when this process exits normally, so none is left stopped.
    private static readonly ConcurrentDictionary<Process, byte> Frozen = new();
    private static int _exitHook;

    /// <summary>Stops the process and schedules its SIGKILL; false if it could not be stopped
    /// (the caller kills it at once).</summary>
    public static bool Freeze(Process process)
    {
        if (!OperatingSystem.IsLinux() || SendSignal(process.Id, SigStop) != 0)
        {
            return false;
        }

        if (Interlocked.Exchange(ref _exitHook, 1) == 0)
        {
            AppDomain.CurrentDomain.ProcessExit += static (_, _) => ReapAll();
        }

        Frozen.TryAdd(process, 0);
        Deprioritize(process.Id);
        _ = ReapLaterAsync(process);
        return true;
    }

    /// <summary>SIGKILLs a frozen process now (idempotent; a process not frozen is left alone).</summary>
    public static void Reap(Process process)
    {
        if (!Frozen.TryRemove(process, out _))
        {
            return;
        }

        try
        {
            process.Kill();
        }
        catch (InvalidOperationException)
        {
            // Gone already.
        }
        catch (System.ComponentModel.Win32Exception)
        {
            // Not ours to kill any more.
        }
    }

    private static async Task ReapLaterAsync(Process process)
    {
        await Task.Delay(ReapDelay).ConfigureAwait(false);
        Reap(process);
    }

    private static void ReapAll()
    {
        foreach (var process in Frozen.Keys)
        {
            Reap(process);
        }
    }

    /// <summary>Moves every thread of the process to SCHED_IDLE, so that its teardown, when it
    /// comes, runs on a CPU nothing else wants.</summary>
    private static void Deprioritize(int processId)
    {
        try
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{processId.ToString(CultureInfo.InvariantCulture)}/task"))
            {
                if (int.TryParse(Path.GetFileName(task), NumberStyles.None, CultureInfo.InvariantCulture, out var threadId))
                {
                    SetIdle(threadId);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Gone already, or not ours to change.
        }
    }

    // A thread that refuses (gone already) keeps its class: the stop is what matters.
    private static unsafe void SetIdle(int threadId)
    {
        var priority = 0; // struct sched_param { int sched_priority; }: 0 for SCHED_IDLE
        _ = SchedSetScheduler(threadId, SchedIdle, &priority);
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SendSignal(int processId, int signal);

    [LibraryImport("libc", EntryPoint = "sched_setscheduler", SetLastError = true)]
    private static unsafe partial int SchedSetScheduler(int threadId, int policy, int* parameters);
}
