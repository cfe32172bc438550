using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// Faults injected by hand into running drivers (<see cref="Microkernel.InjectFault"/>, what
/// <c>drviso inject</c> calls): armed in the running instance, they fire on its next request, in
/// a host and in-kernel alike; bad requests are refused with the reason and change nothing.
/// </summary>
[Collection("processes")]
public sealed class InjectFaultTests
{
    [Theory]
    [InlineData(IsolationModel.InKernel)]
    [InlineData(IsolationModel.Process)]
    public async Task WrongStatus_ArmedWhileRunning_FiresOnTheNextRequestOnly(IsolationModel isolation)
    {
        await using var kernel = new Microkernel(new KernelOptions { FaultInjection = true, WarmPoolSize = 0 });
        await kernel.StartAsync([TestManifests.Sample("Null")], isolation).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[8]).Bounded()).Status);

        var said = kernel.InjectFault("Null", "wrong-status");

        Assert.Equal($"wrong-status armed in Null ({isolation.ToManifestName()}): it fires on the driver's next request", said);
        Assert.Equal(NtStatus.InvalidDeviceState, (await nul.ReadAsync(new byte[8]).Bounded()).Status);
        Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[8]).Bounded()).Status);
        var injected = await kernel.Events.WaitForAsync(KernelEventKind.FaultInjected).Bounded();
        Assert.Equal("Null", injected.Driver);
        Assert.Contains("wrong-status in Null on Read", injected.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BadInjections_AreRefusedWithTheReason()
    {
        await using var kernel = new Microkernel(new KernelOptions { FaultInjection = true, WarmPoolSize = 0 });
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.InKernel).Bounded();
        await using var plain = new Microkernel(new KernelOptions { WarmPoolSize = 0 });
        await plain.StartAsync([TestManifests.Sample("Null")], IsolationModel.InKernel).Bounded();

        Assert.Equal("no driver named Nope", Assert.Throws<KeyNotFoundException>(() => kernel.InjectFault("Nope", "hang")).Message);
        Assert.StartsWith("unknown fault \"melt\" (expected kill, unhandled-exception, ",
            Assert.Throws<ArgumentException>(() => kernel.InjectFault("Null", "melt")).Message, StringComparison.Ordinal);
        Assert.Equal("wild-dma-kernel programs block hardware, and Null drives none",
            Assert.Throws<InvalidOperationException>(() => kernel.InjectFault("Null", "wild-dma-kernel")).Message);
        Assert.StartsWith("Null was loaded without the fault shim",
            Assert.Throws<InvalidOperationException>(() => plain.InjectFault("Null", "hang")).Message, StringComparison.Ordinal);

        // None of it armed anything.
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[8]).Bounded()).Status);
        Assert.DoesNotContain(kernel.Events.Snapshot(), e => e.Kind == KernelEventKind.FaultInjected);
    }
}
