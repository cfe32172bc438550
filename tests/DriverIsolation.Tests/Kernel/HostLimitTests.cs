using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>A host that floods the kernel (log lines, forged completions) passes a per-second
/// limit and is killed as a protocol violation; its neighbours carry on. The clock is fake and
/// stands still, so the limits' buckets do not refill during a test and the counts are exact.</summary>
[Collection("processes")]
public sealed class HostLimitTests
{
    [Fact]
    public async Task LogFlood_OverTheLimit_HostKilledOthersServe()
    {
        await using var kernel = new Microkernel(new KernelOptions { MaxLogLinesPerSecond = 1000, HeartbeatPeriod = null }, timeProvider: new FakeTimeProvider());
        await kernel.StartAsync([TestManifests.Test("Flood"), TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var flood = await kernel.OpenAsync(@"\Device\Flood").Bounded();
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();

        var read = await flood.ReadAsync(new byte[1]).Bounded();
        var violation = await kernel.Events.WaitForAsync(KernelEventKind.ProtocolViolation).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.HostExited).Bounded();

        Assert.Equal("log flood: more than 1000 log lines a second", violation.Detail);
        Assert.Equal("Flood", violation.Driver);
        Assert.Contains(read.Status, new[] { NtStatus.Success, NtStatus.DriverProcessTerminated });
        Assert.Equal(DriverState.Failed, kernel.GetDrivers().Single(d => d.Name == "Flood").State);
        Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
    }

    [Fact]
    public async Task ForgedCompletionFlood_OverTheLimit_HostKilledAndTheRealIrpCompletesOnce()
    {
        await using var kernel = new Microkernel(new KernelOptions { MaxRefusalsPerSecond = 100, HeartbeatPeriod = null }, timeProvider: new FakeTimeProvider());
        await kernel.StartAsync([TestManifests.Test("Flood"), TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var flood = await kernel.OpenAsync(@"\Device\Flood").Bounded();
        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();

        var write = await flood.WriteAsync(new byte[1]).Bounded();
        var violation = await kernel.Events.WaitForAsync(KernelEventKind.ProtocolViolation).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.HostExited).Bounded();

        Assert.Equal("refusal flood: more than 100 refused messages a second", violation.Detail);
        Assert.Equal(NtStatus.DriverProcessTerminated, write.Status);
        Assert.Equal(101, kernel.Events.Count(KernelEventKind.CompletionRefused));
        Assert.Equal(1, kernel.Events.Count(KernelEventKind.ProtocolViolation));
        Assert.Equal(0, kernel.DuplicateDeliveries);
        Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
    }
}
