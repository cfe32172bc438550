using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// The watchdog with real host processes: a host killed under load comes back, the retry policy
/// hides the crash from callers, handles keep working, crash loops end in quarantine while the
/// others serve, a crashing shared host's drivers move to their own processes, and a boot-critical
/// driver that crashes at every load leaves the system in safe mode instead of a boot loop.
/// (Backoffs are a few milliseconds of real time here; the policy's exact timing has its own
/// fake-clock tests.)
/// </summary>
[Collection("processes")]
public sealed class RecoveryTests : IDisposable
{
    private const int Blocks = 64;
    private const int BlockSize = 4096;
    private static readonly RecoveryPolicy Fast = new() { BackoffBase = TimeSpan.FromMilliseconds(1), BackoffMax = TimeSpan.FromMilliseconds(20) };
    private readonly string _backingFile = Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), $"drviso-test-{Guid.NewGuid():N}");

    public void Dispose() => File.Delete(_backingFile);

    [Fact]
    public async Task HostKilledUnderLoad_RetryPolicy_EveryRequestSucceedsOnceAndDataIsIntact()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([RamDisk(Fast with { InFlight = InFlightPolicy.Retry })], IsolationModel.Process).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\RamDisk0").Bounded();
        var firstPid = kernel.GetDrivers().Single().ProcessId;

        var writes = Enumerable.Range(0, Blocks).Select(b => disk.WriteAsync(Pattern(b, 1), (long)b * BlockSize).AsTask()).ToList();
        kernel.KillDriverHost("RamDisk");
        var written = await Task.WhenAll(writes).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.All(written, r => Assert.Equal(new IoResult(NtStatus.Success, BlockSize), r));
        for (var b = 0; b < Blocks; b++)
        {
            var back = new byte[BlockSize];
            Assert.Equal(new IoResult(NtStatus.Success, BlockSize), await disk.ReadAsync(back, (long)b * BlockSize).Bounded());
            Assert.Equal(Pattern(b, 1), back);
        }

        var driver = kernel.GetDrivers().Single();
        Assert.Equal(DriverState.Running, driver.State);
        Assert.Equal(1, driver.Restarts);
        Assert.NotEqual(firstPid, driver.ProcessId);
        Assert.Equal(0, kernel.OutstandingIrps);
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.CompletionRefused));
    }

    [Fact]
    public async Task RequestParkedForABackedOffRestart_CancelledAtOnce_AndNoDriverEverSeesIt()
    {
        var time = new FakeTimeProvider();
        var backoff = TimeSpan.FromSeconds(5);
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = null }, timeProvider: time);
        await kernel.StartAsync([RamDisk(new RecoveryPolicy { BackoffBase = backoff, BackoffMax = backoff, InFlight = InFlightPolicy.Retry })], IsolationModel.Process).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\RamDisk0").Bounded();
        kernel.KillDriverHost("RamDisk");
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        // The second failure waits for its backoff: requests issued meanwhile are parked.
        kernel.KillDriverHost("RamDisk");
        var scheduled = await kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.RestartScheduled, 2).Bounded();
        var parked = disk.ReadAsync(new byte[BlockSize]);
        Assert.False(parked.IsCompleted);
        Assert.Equal(1, disk.OutstandingRequests);

        disk.CancelIo();
        Assert.True(parked.IsCompleted);
        Assert.Equal(IoResult.FromStatus(NtStatus.Cancelled), await parked.Bounded());
        Assert.Equal(0, disk.OutstandingRequests);

        await AdvanceUntilRestartedAsync(time, backoff, kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.DriverRestarted, 2));
        Assert.Equal(new IoResult(NtStatus.Success, BlockSize), await disk.WriteAsync(Pattern(0, 2)).Bounded());
        var back = new byte[BlockSize];
        Assert.Equal(new IoResult(NtStatus.Success, BlockSize), await disk.ReadAsync(back).Bounded());
        Assert.Equal(Pattern(0, 2), back);
        Assert.Equal(0, kernel.OutstandingIrps);
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.CompletionRefused));
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.LateCompletion));
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.WatchdogKill));
        Assert.DoesNotContain("in 0 ms", scheduled.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task OpenWhileTheDriverRestarts_RetryPolicy_WaitsForTheRestartAndTheHandleWorks()
    {
        var time = new FakeTimeProvider();
        var backoff = TimeSpan.FromSeconds(5);
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = null }, timeProvider: time);
        await kernel.StartAsync([RamDisk(new RecoveryPolicy { BackoffBase = backoff, BackoffMax = backoff, InFlight = InFlightPolicy.Retry })], IsolationModel.Process).Bounded();
        kernel.KillDriverHost("RamDisk");
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();
        kernel.KillDriverHost("RamDisk");
        await kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.RestartScheduled, 2).Bounded();

        // The driver is down for its backoff: the open is parked, not refused.
        var opening = kernel.OpenAsync(@"\??\RamDisk0");
        Assert.False(opening.IsCompleted);
        Assert.Equal(1, kernel.OutstandingIrps);

        var restarted = await AdvanceUntilRestartedAsync(time, backoff, kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.DriverRestarted, 2));
        await using var disk = await opening.Bounded();
        Assert.Contains("1 parked IRPs re-issued", restarted.Detail, StringComparison.Ordinal);
        Assert.Equal(new IoResult(NtStatus.Success, BlockSize), await disk.WriteAsync(Pattern(3, 4), 3 * BlockSize).Bounded());
        var back = new byte[BlockSize];
        Assert.Equal(new IoResult(NtStatus.Success, BlockSize), await disk.ReadAsync(back, 3 * BlockSize).Bounded());
        Assert.Equal(Pattern(3, 4), back);
        Assert.Equal(0, kernel.OutstandingIrps);
    }

    [Fact]
    public async Task OpenWhileTheDriverRestarts_FailPolicy_IsRefusedAtOnce()
    {
        var time = new FakeTimeProvider();
        var backoff = TimeSpan.FromSeconds(5);
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = null }, timeProvider: time);
        await kernel.StartAsync([RamDisk(new RecoveryPolicy { BackoffBase = backoff, BackoffMax = backoff })], IsolationModel.Process).Bounded();
        kernel.KillDriverHost("RamDisk");
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();
        kernel.KillDriverHost("RamDisk");
        await kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.RestartScheduled, 2).Bounded();

        var refused = await Assert.ThrowsAsync<IoException>(() => kernel.OpenAsync(@"\??\RamDisk0")).Bounded();
        Assert.Equal(NtStatus.DeviceNotReady, refused.Status);
        Assert.Equal(0, kernel.OutstandingIrps);
    }

    [Fact]
    public async Task Restart_TakesTheWarmHostAndThePoolRefills()
    {
        await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 1, PrepareWarmHosts = true });
        await kernel.StartAsync([TestManifests.Sample("Null") with { Recovery = Fast }], IsolationModel.Process).Bounded();
        var warm = await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.HostStarted && e.Driver == "pool-1").Bounded();
        var warmPid = Assert.Single(kernel.WarmPoolProcessIds);
        Assert.Equal($"PID {warmPid}", warm.Detail);

        kernel.KillDriverHost("Null");
        var restarted = await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();
        await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.HostStarted && e.Driver == "pool-2").Bounded();

        // The warm host had loaded Null ahead of time, before it was taken.
        Assert.StartsWith($"PID {warmPid}, loaded ahead in a warm host; recovery ", restarted.Detail, StringComparison.Ordinal);

        var driver = kernel.GetDrivers().Single();
        Assert.Equal(warmPid, driver.ProcessId);
        Assert.Equal("Null", driver.Host);
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();
        Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[4]).Bounded()).Status);
    }

    [Fact]
    public async Task HostKilled_FailPolicy_PendingRequestsFailOnceAndTheHandleWorksAfterTheRestart()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("Echo") with { Recovery = Fast }], IsolationModel.Process).Bounded();
        await using var echo = await kernel.OpenAsync(@"\??\Echo").Bounded();
        var reads = Enumerable.Range(0, 3).Select(_ => echo.ReadAsync(new byte[8]).AsTask()).ToList();
        Assert.Equal(3, echo.OutstandingRequests);

        kernel.KillDriverHost("Echo");
        var results = await Task.WhenAll(reads).Bounded();
        var restarted = await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.All(results, r => Assert.Equal(IoResult.FromStatus(NtStatus.DriverProcessTerminated), r));
        Assert.Contains("1 handles re-opened", restarted.Detail, StringComparison.Ordinal);
        Assert.Equal(new IoResult(NtStatus.Success, 5), await echo.WriteAsync("after"u8.ToArray()).Bounded());
        var buffer = new byte[8];
        Assert.Equal(new IoResult(NtStatus.Success, 5), await echo.ReadAsync(buffer).Bounded());
        Assert.Equal("after"u8.ToArray(), buffer[..5]);
    }

    [Fact]
    public async Task CrashLoop_EndsInQuarantineWhileTheOthersServe_AndCanBeReenabled()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync(
        [
            TestManifests.Test("Crash") with { Recovery = Fast with { MaxFailures = 2 } },
            TestManifests.Sample("Null"),
        ], IsolationModel.Process).Bounded();
        await using var crash = await kernel.OpenAsync(@"\Device\Crash").Bounded();
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();

        for (var failure = 1; failure <= 2; failure++)
        {
            Assert.Equal(NtStatus.DriverProcessTerminated, (await crash.WriteAsync(new byte[1]).Bounded()).Status);
            await kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.DriverRestarted && e.Driver == "Crash", failure).Bounded();
            Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
        }

        Assert.Equal(NtStatus.DriverProcessTerminated, (await crash.WriteAsync(new byte[1]).Bounded()).Status);
        var quarantined = await kernel.Events.WaitForAsync(KernelEventKind.DriverQuarantined).Bounded();

        Assert.Equal("Crash", quarantined.Driver);
        Assert.StartsWith("3 failures within", quarantined.Detail, StringComparison.Ordinal);
        Assert.Equal(IoResult.FromStatus(NtStatus.DeviceQuarantined), await crash.ReadAsync(new byte[1]).Bounded());
        Assert.Equal("Crash", Assert.Single(kernel.GetQuarantined()).Name);
        Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
        Assert.Equal(DriverState.Running, kernel.GetDrivers().Single(d => d.Name == "Null").State);

        kernel.Reenable("Crash");
        await kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.DriverRestarted && e.Driver == "Crash", 3).Bounded();
        Assert.Equal(DriverState.Running, kernel.GetDrivers().Single(d => d.Name == "Crash").State);
        Assert.Empty(kernel.GetQuarantined());
    }

    [Fact]
    public async Task SharedHostCrash_DriversComeBackEachInTheirOwnProcess()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync(
        [
            TestManifests.Test("Crash") with { Recovery = Fast },
            TestManifests.Sample("Null") with { Recovery = Fast },
        ], IsolationModel.SharedHost).Bounded();
        await using var crash = await kernel.OpenAsync(@"\Device\Crash").Bounded();
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();
        var sharedPid = kernel.GetDrivers().Select(d => d.ProcessId).Distinct().Single();

        await crash.WriteAsync(new byte[1]).Bounded();
        await kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.DriverRestarted, 2).Bounded();

        var drivers = kernel.GetDrivers();
        Assert.All(drivers, d => Assert.Equal(IsolationModel.Process, d.Isolation));
        Assert.All(drivers, d => Assert.NotEqual(sharedPid, d.ProcessId));
        Assert.NotEqual(drivers[0].ProcessId, drivers[1].ProcessId);
        Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
    }

    [Fact]
    public async Task BootCriticalDriverCrashingAtEveryLoad_SystemBootsInSafeModeWithoutIt()
    {
        await using var kernel = new Microkernel();

        await kernel.StartAsync([TestManifests.Test("BootCrash"), TestManifests.Sample("Null")], IsolationModel.Process).Bounded();

        Assert.NotNull(kernel.SafeModeReason);
        Assert.StartsWith("BootCrash is quarantined", kernel.SafeModeReason, StringComparison.Ordinal);
        Assert.Equal(KernelEventKind.SafeMode, (await kernel.Events.WaitForAsync(KernelEventKind.SafeMode).Bounded()).Kind);
        Assert.Equal("BootCrash", Assert.Single(kernel.GetQuarantined()).Name);
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
    }

    /// <summary>Advances the fake clock by the backoff until the restart it delays has happened.
    /// The supervisor announces a restart (RestartScheduled) before Polly arms the delay on the
    /// clock, so an advance made right after the announcement can come before the delay exists; a
    /// busy machine (warm hosts starting beside the test) makes that likelier. At most four
    /// advances, 20 s of fake time: short of the parked requests' 30 s deadline.</summary>
    private static async Task<KernelEvent> AdvanceUntilRestartedAsync(FakeTimeProvider time, TimeSpan backoff, Task<KernelEvent> restarted)
    {
        for (var i = 0; i < 4 && !restarted.IsCompleted; i++)
        {
            time.Advance(backoff);
            try
            {
                await restarted.WaitAsync(TimeSpan.FromSeconds(5));
            }
            catch (TimeoutException)
            {
                // The delay was armed after this advance (or the restart is slow): advance again.
            }
        }

        return await restarted.Bounded();
    }

    private DriverManifest RamDisk(RecoveryPolicy recovery)
    {
        var sample = TestManifests.Sample("RamDisk");
        var device = sample.Devices[0];
        var parameters = new Dictionary<string, string>(device.Parameters) { ["backingFile"] = _backingFile };
        return sample with { Recovery = recovery, Devices = [device with { Parameters = parameters }] };
    }

    private static byte[] Pattern(int block, int generation)
    {
        var data = new byte[BlockSize];
        new Random((block * 31) + generation).NextBytes(data);
        return data;
    }
}
