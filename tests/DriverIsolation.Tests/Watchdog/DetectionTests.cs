using System.Diagnostics;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>The watchdog's detections with real host processes and a fake clock: a frozen host
/// misses its heartbeats, a hung driver holds a critical request past its deadline, a leaking
/// driver passes its memory budget. Each is killed and comes back.</summary>
[Collection("processes")]
public sealed class DetectionTests
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(1);

    [Fact]
    public async Task FrozenHost_TwoMissedHeartbeats_KilledAndRestarted()
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = Period }, timeProvider: time);
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        var pid = kernel.GetDrivers().Single().ProcessId;
        using (var stop = Process.Start("kill", ["-STOP", pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            await stop.WaitForExitAsync().Bounded();
        }

        time.Advance(Period);
        time.Advance(Period);
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.WatchdogKill));
        time.Advance(Period);
        var kill = await kernel.Events.WaitForAsync(KernelEventKind.WatchdogKill).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.StartsWith("hung: 2 heartbeats unanswered", kill.Detail, StringComparison.Ordinal);
        Assert.NotEqual(pid, kernel.GetDrivers().Single().ProcessId);
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();
        Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[4]).Bounded()).Status);
    }

    [Fact]
    public async Task HungDriver_CriticalReadPastItsDeadline_HostKilledAndRestarted()
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = null }, timeProvider: time);
        await kernel.StartAsync([TestManifests.Test("Hang")], IsolationModel.Process).Bounded();
        await using var hang = await kernel.OpenAsync(@"\Device\Hang").Bounded();
        var pid = kernel.GetDrivers().Single().ProcessId;

        var read = hang.ReadAsync(new byte[4]);
        time.Advance(TimeSpan.FromMilliseconds(1999));
        Assert.False(read.IsCompleted);
        time.Advance(TimeSpan.FromMilliseconds(1));
        var result = await read.Bounded();
        var kill = await kernel.Events.WaitForAsync(KernelEventKind.WatchdogKill).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.Equal(IoResult.FromStatus(NtStatus.IoTimeout), result);
        Assert.Contains("critical Read IRP", kill.Detail, StringComparison.Ordinal);
        Assert.NotEqual(pid, kernel.GetDrivers().Single().ProcessId);
        Assert.Equal(DriverState.Running, kernel.GetDrivers().Single().State);
    }

    [Fact]
    public async Task LeakingDriver_OverItsMemoryBudget_HostKilledAndRestarted()
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = Period }, timeProvider: time);
        await kernel.StartAsync([TestManifests.Test("Hog")], IsolationModel.Process).Bounded();
        await using var hog = await kernel.OpenAsync(@"\Device\Hog").Bounded();

        Assert.Equal(NtStatus.Success, (await hog.WriteAsync(new byte[1]).Bounded()).Status);
        Assert.Equal(NtStatus.Success, (await hog.WriteAsync(new byte[1]).Bounded()).Status);
        Assert.Equal(NtStatus.Success, (await hog.WriteAsync(new byte[1]).Bounded()).Status);
        time.Advance(Period);
        var kill = await kernel.Events.WaitForAsync(KernelEventKind.WatchdogKill).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.StartsWith("over its memory budget", kill.Detail, StringComparison.Ordinal);
        Assert.EndsWith("> 160 MiB", kill.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DriverLeakingHandles_OverItsHandleBudget_HostKilledAndRestarted()
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = Period }, timeProvider: time);
        await kernel.StartAsync([TestManifests.Test("Leaker")], IsolationModel.Process).Bounded();
        await using var leaker = await kernel.OpenAsync(@"\Device\Leaker").Bounded();

        // 500 files on top of what the host holds anyway: over the manifest's 400, as the
        // operating system counts them (the host is not asked).
        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(NtStatus.Success, (await leaker.WriteAsync(new byte[1]).Bounded()).Status);
        }

        time.Advance(Period);
        var kill = await kernel.Events.WaitForAsync(KernelEventKind.WatchdogKill).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.Matches(@"^over its handle budget: \d+ open handles > 400$", kill.Detail);
        Assert.True(int.Parse(kill.Detail.Split(' ')[4], System.Globalization.CultureInfo.InvariantCulture) > 500, kill.Detail);
    }
}
