using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>A driver may hold at most <see cref="KernelOptions.MaxIrpsInFlightPerDriver"/>
/// requests: one that never completes cannot make its callers grow the kernel. A request past the
/// limit fails at once; a finished one frees its slot; other drivers are not limited by it.</summary>
[Collection("processes")]
public sealed class InFlightLimitTests
{
    [Fact]
    public async Task PastTheLimit_FailsAtOnce_AndASlotFreesWhenARequestFinishes()
    {
        await using var kernel = new Microkernel(new KernelOptions { MaxIrpsInFlightPerDriver = 3, WarmPoolSize = 0 });
        await kernel.StartAsync([TestManifests.Sample("Echo"), TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var echo = await kernel.OpenAsync(@"\??\Echo").Bounded();
        await using var other = await kernel.OpenAsync(@"\??\Echo").Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();

        // Echo's reads wait for a write: three of them fill Echo's slots.
        using var cancelFirst = new CancellationTokenSource();
        var first = echo.ReadAsync(new byte[16], cancellationToken: cancelFirst.Token).AsTask();
        var waiting = new[] { first, echo.ReadAsync(new byte[16]).AsTask(), echo.ReadAsync(new byte[16]).AsTask() };
        Assert.Equal(3, kernel.OutstandingIrps); // slots are taken when a request is submitted

        Assert.Equal(IoResult.FromStatus(NtStatus.InsufficientResources), await other.WriteAsync("refused"u8.ToArray()).Bounded());
        Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
        Assert.All(waiting, w => Assert.False(w.IsCompleted));

        await cancelFirst.CancelAsync();
        Assert.Equal(IoResult.FromStatus(NtStatus.Cancelled), await first.Bounded());
        Assert.Equal(new IoResult(NtStatus.Success, 5), await other.WriteAsync("hello"u8.ToArray()).Bounded());
        var served = await Task.WhenAny(waiting[1], waiting[2]).Bounded();
        Assert.Equal(new IoResult(NtStatus.Success, 5), await served);
        Assert.Equal(1, kernel.OutstandingIrps);
    }
}
