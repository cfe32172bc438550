using System.Diagnostics;
using System.Runtime.InteropServices;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging.Abstractions;

namespace DriverIsolation.Tests;

/// <summary>
/// A host the kernel kills is stopped at once and reported gone then (recovery does not wait the
/// 10-20 ms the OS takes to tear a .NET process down), once, with the kill's reason; it is
/// SIGKILLed a moment later without anyone asking; the channel's Exited still waits for the real
/// exit, so nothing that awaits it outlives an unreaped process.
/// </summary>
[Collection("processes")]
public sealed class KilledHostTests : IDisposable
{
    private readonly KernelOptions _options = new() { WarmPoolSize = 0 };
    private readonly KernelEventLog _events = new(TimeProvider.System);
    private readonly IoManager _io;

    public KilledHostTests() => _io = new IoManager(TimeProvider.System, _events, NullLogger.Instance, _options);

    public void Dispose() => _io.Dispose();

    [Fact]
    public async Task KilledHost_ReportedOnceWithTheKillsReason_ExitedAfterTheProcessIsReaped()
    {
        var launcher = new HostLauncher(_options, _io, _events, NullLoggerFactory.Instance, TimeProvider.System);
        var reports = new List<string>();
        var reported = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var host = await launcher.StartAsync("victim", IsolationModel.Process, (_, reason) =>
        {
            lock (reports)
            {
                reports.Add(reason);
            }

            reported.TrySetResult();
        }, CancellationToken.None).Bounded();
        await using var cleanup = host;
        var pid = host.ProcessId;
        Assert.True(host.IsAlive);

        host.Kill("killed by the test");
        await reported.Task.Bounded();
        Assert.False(host.IsAlive);
        var exitReason = await host.Exited.Bounded();

        // Exited came after the process was reaped, and the real exit did not report again.
        Assert.Throws<ArgumentException>(() => Process.GetProcessById(pid));
        Assert.Equal("killed by the test (killed (SIGKILL))", exitReason);
        lock (reports)
        {
            Assert.Equal(["killed by the test (killed (SIGKILL))"], reports);
        }
    }

    [Fact]
    public async Task KilledHost_IsStoppedAtOnce_ThenReaped()
    {
        var launcher = new HostLauncher(_options, _io, _events, NullLoggerFactory.Instance, TimeProvider.System);
        var host = await launcher.StartAsync("frozen", IsolationModel.Process, (_, _) => { }, CancellationToken.None).Bounded();
        await using var cleanup = host;
        var pid = host.ProcessId;

        // Waiting for the child to stop (the OS's own record of it, left in place for the runtime)
        // from before the kill: the stop lasts 50 ms, then the process is reaped.
        var stop = ChildState.StartWaitingForStop(pid);
        await stop.Waiting.Bounded();
        host.Kill("killed by the test");

        // Stopped, not torn down yet: its teardown waits until its replacement would be serving.
        Assert.Equal(ChildState.StoppedBySigStop, await stop.Stopped.Bounded());

        // Then SIGKILLed without anyone asking: Exited completes once the process is reaped.
        Assert.Equal("killed by the test (killed (SIGKILL))", await host.Exited.Bounded());
        Assert.Throws<ArgumentException>(() => Process.GetProcessById(pid));
    }

    [Fact]
    public async Task KernelShutdownRightAfterAKill_WaitsForTheKilledHostToBeReaped()
    {
        int pid;
        await using (var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 0, HeartbeatPeriod = null }))
        {
            await kernel.StartAsync([TestManifests.Test("Hog") with { Recovery = new RecoveryPolicy { Restart = false } }], IsolationModel.Process).Bounded();
            pid = kernel.GetDrivers().Single().ProcessId;

            // 256 MiB touched: the OS takes far longer to tear this host down than the kernel takes
            // to report it gone and to shut down.
            await using (var hog = await kernel.OpenAsync(@"\Device\Hog").Bounded())
            {
                for (var i = 0; i < 4; i++)
                {
                    Assert.Equal(NtStatus.Success, (await hog.WriteAsync(new byte[1]).Bounded()).Status);
                }
            }

            kernel.KillDriverHost("Hog");
            var exited = await kernel.Events.WaitForAsync(KernelEventKind.HostExited).Bounded();
            Assert.StartsWith($"PID {pid}: killed on request (Hog) (killed (SIGKILL))", exited.Detail, StringComparison.Ordinal);
        }

        // Reported gone at the SIGKILL, but the kernel's shutdown still waited for the real exit.
        Assert.Throws<ArgumentException>(() => Process.GetProcessById(pid));
    }

    [Fact]
    public async Task HostThatExitsByItself_ReportedOnceWithItsExitCode()
    {
        var launcher = new HostLauncher(_options, _io, _events, NullLoggerFactory.Instance, TimeProvider.System);
        var reports = new List<string>();
        var host = await launcher.StartAsync("quitter", IsolationModel.Process, (_, reason) =>
        {
            lock (reports)
            {
                reports.Add(reason);
            }
        }, CancellationToken.None).Bounded();
        await using var cleanup = host;

        // Asked to shut down, the host exits by itself (code 0): reported at its exit, not before.
        await host.StopAsync(TimeSpan.FromSeconds(30)).Bounded();

        Assert.Equal("stopped by the kernel (shut down when asked)", await host.Exited.Bounded());
        lock (reports)
        {
            Assert.Equal(["stopped by the kernel (shut down when asked)"], reports);
        }
    }
}

/// <summary>waitid(2) on a child of this process for a stop, leaving it waitable (WNOWAIT), so the
/// runtime still reaps it as usual.</summary>
internal static partial class ChildState
{
    public const string StoppedBySigStop = "stopped by signal 19";

    private const int PidType = 1;          // P_PID
    private const int WaitStopped = 2;      // WSTOPPED
    private const int NoWait = 0x01000000;  // WNOWAIT
    private const int NoHang = 1;           // WNOHANG
    private const int ChildStopped = 5;     // CLD_STOPPED

    /// <summary>Waits on a thread of its own: <c>Waiting</c> completes just before the thread
    /// blocks in waitid, <c>Stopped</c> with how the child stopped.</summary>
    public static (Task Waiting, Task<string> Stopped) StartWaitingForStop(int pid)
    {
        var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var stopped = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            // Binds waitid and compiles its stub now, so that the wait below starts at once: the
            // child stays stopped for only 50 ms.
            var probe = Marshal.AllocHGlobal(128);
            _ = WaitId(PidType, pid, probe, WaitStopped | NoWait | NoHang);
            Marshal.FreeHGlobal(probe);
            waiting.SetResult();
            stopped.SetResult(WaitForStop(pid));
        })
        { IsBackground = true, Name = $"waitid {pid}" };
        thread.Start();
        return (waiting.Task, stopped.Task);
    }

    /// <summary>Blocks until the child stops (or is gone); says how it stopped.</summary>
    private static string WaitForStop(int pid)
    {
        var info = Marshal.AllocHGlobal(128); // siginfo_t
        try
        {
            if (WaitId(PidType, pid, info, WaitStopped | NoWait) != 0)
            {
                return $"waitid failed: errno {Marshal.GetLastPInvokeError()}";
            }

            // siginfo_t: si_signo, si_errno, si_code, then (for SIGCHLD) si_pid, si_uid, si_status.
            var code = Marshal.ReadInt32(info, 8);
            var status = Marshal.ReadInt32(info, 24);
            return code == ChildStopped ? $"stopped by signal {status}" : $"not stopped (si_code {code}, status {status})";
        }
        finally
        {
            Marshal.FreeHGlobal(info);
        }
    }

    [LibraryImport("libc", EntryPoint = "waitid", SetLastError = true)]
    private static partial int WaitId(int idType, int id, IntPtr info, int options);
}
