using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// One driver crashes (an unhandled exception in its Write routine) while it holds a pending Read.
/// What else goes down depends only on the isolation model: in its own process, nothing; in a
/// shared host, its host mates; in the kernel, everything. Restarting is off here, to see the
/// blast radius alone (recovery has its own tests).
/// </summary>
[Collection("processes")]
public sealed class BlastRadiusTests
{
    private static DriverManifest NoRestart(DriverManifest manifest) => manifest with { Recovery = new RecoveryPolicy { Restart = false } };

    [Fact]
    public async Task Process_CrashingDriver_FailsOnlyItsOwnRequests()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([NoRestart(TestManifests.Test("Crash")), NoRestart(TestManifests.Sample("Null"))], IsolationModel.Process).Bounded();
        await using var crash = await kernel.OpenAsync(@"\Device\Crash").Bounded();
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();

        var pending = crash.ReadAsync(new byte[8]);
        var write = await crash.WriteAsync(new byte[8]).Bounded();
        var read = await pending.Bounded();
        var exited = await kernel.Events.WaitForAsync(KernelEventKind.HostExited).Bounded();

        Assert.Equal(NtStatus.DriverProcessTerminated, write.Status);
        Assert.Equal(NtStatus.DriverProcessTerminated, read.Status);
        Assert.Contains("aborted", exited.Detail, StringComparison.Ordinal);
        Assert.Equal(new IoResult(NtStatus.Success, 16), await nul.ReadAsync(new byte[16]).Bounded());
        Assert.Equal(NtStatus.DriverProcessTerminated, (await crash.ReadAsync(new byte[8]).Bounded()).Status);
        Assert.Equal(DriverState.Failed, kernel.GetDrivers().Single(d => d.Name == "Crash").State);
        Assert.Equal(DriverState.Running, kernel.GetDrivers().Single(d => d.Name == "Null").State);
        Assert.Null(kernel.BugCheckReason);
        Assert.Equal(0, kernel.OutstandingIrps);
    }

    [Fact]
    public async Task SharedHost_CrashingDriver_TakesItsHostMatesButNotOtherHosts()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync(
        [
            NoRestart(TestManifests.Test("Crash")) with { Isolation = IsolationModel.SharedHost },
            NoRestart(TestManifests.Sample("Null")) with { Isolation = IsolationModel.SharedHost },
            NoRestart(TestManifests.Sample("Echo")) with { Isolation = IsolationModel.Process },
        ]).Bounded();
        await using var crash = await kernel.OpenAsync(@"\Device\Crash").Bounded();
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();
        await using var echo = await kernel.OpenAsync(@"\Device\Echo").Bounded();
        var drivers = kernel.GetDrivers();
        Assert.Equal(drivers.Single(d => d.Name == "Crash").ProcessId, drivers.Single(d => d.Name == "Null").ProcessId);

        var write = await crash.WriteAsync(new byte[8]).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.HostExited).Bounded();

        Assert.Equal(NtStatus.DriverProcessTerminated, write.Status);
        Assert.Equal(NtStatus.DriverProcessTerminated, (await nul.ReadAsync(new byte[16]).Bounded()).Status);
        Assert.Equal(new IoResult(NtStatus.Success, 2), await echo.WriteAsync("ok"u8.ToArray()).Bounded());
        Assert.Equal(new IoResult(NtStatus.Success, 2), await echo.ReadAsync(new byte[2]).Bounded());
    }

    [Fact]
    public async Task InKernel_CrashingDriver_BugChecksTheWholeSystem()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([NoRestart(TestManifests.Test("Crash")), NoRestart(TestManifests.Sample("Null"))], IsolationModel.InKernel).Bounded();
        await using var crash = await kernel.OpenAsync(@"\Device\Crash").Bounded();
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();

        var pending = crash.ReadAsync(new byte[8]);
        var write = await crash.WriteAsync(new byte[8]).Bounded();
        var bugCheck = await kernel.Events.WaitForAsync(KernelEventKind.BugCheck).Bounded();

        Assert.Equal(NtStatus.SystemCrashed, write.Status);
        Assert.Equal(NtStatus.SystemCrashed, (await pending.Bounded()).Status);
        Assert.Equal(NtStatus.SystemCrashed, (await nul.ReadAsync(new byte[16]).Bounded()).Status);
        Assert.Contains("simulated driver bug", bugCheck.Detail, StringComparison.Ordinal);
        Assert.Equal(bugCheck.Detail, kernel.BugCheckReason);
    }

    [Fact]
    public async Task KillDriverHost_OutstandingIrpsCompleteOnceWithDriverProcessTerminated()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([NoRestart(TestManifests.Sample("Echo"))], IsolationModel.Process).Bounded();
        await using var echo = await kernel.OpenAsync(@"\Device\Echo").Bounded();
        var reads = Enumerable.Range(0, 10).Select(_ => echo.ReadAsync(new byte[4]).AsTask()).ToList();
        Assert.Equal(10, echo.OutstandingRequests);

        kernel.KillDriverHost("Echo");
        var results = await Task.WhenAll(reads).Bounded();
        var exited = await kernel.Events.WaitForAsync(KernelEventKind.HostExited).Bounded();

        Assert.All(results, r => Assert.Equal(NtStatus.DriverProcessTerminated, r.Status));
        Assert.Contains("killed on request", exited.Detail, StringComparison.Ordinal);
        Assert.Equal(0, kernel.OutstandingIrps);
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.CompletionRefused));
    }
}
