using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

// Taking a request's result twice is the point here: it shows whether its IRP was reused.
#pragma warning disable CA2012

namespace DriverIsolation.Tests;

/// <summary>
/// A request's <see cref="ValueTask{TResult}"/> is the kernel's IRP, reused for another request
/// once its caller has taken the result, but only when nothing but the I/O manager's own path can
/// still hold it. Taking a result a second time tells which: a reused IRP refuses (its version
/// moved on), one kept out of the pool gives the same result again. A driver that completes an
/// IRP the kernel has already finished and reused must not reach the request now in it.
/// </summary>
[Collection("processes")]
public sealed class IrpReuseTests
{
    [Fact]
    public async Task AFinishedIrp_IsReusedOnceItsCallerHasTheResult()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.InKernel).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        var buffer = new byte[512];

        var read = nul.ReadAsync(buffer);
        Assert.Equal(new IoResult(NtStatus.Success, 512), await read);

        Assert.Throws<InvalidOperationException>(() => TakeAgain(read));
        buffer.AsSpan().Fill(0xFF);
        Assert.Equal(new IoResult(NtStatus.Success, 512), await nul.ReadAsync(buffer));
        Assert.All(buffer, b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task AnIrpFinishedOnItsDeadline_IsNotReused()
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(timeProvider: time);
        await kernel.StartAsync([TestManifests.Test("Hang")], IsolationModel.Process).Bounded();
        await using var hang = await kernel.OpenAsync(@"\Device\Hang").Bounded();

        var read = hang.ReadAsync(new byte[16]);
        time.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal(NtStatus.IoTimeout, (await read.Bounded()).Status);

        // Its deadline's callback (and the kill of the hung host) may still be at work on it.
        Assert.Equal(NtStatus.IoTimeout, TakeAgain(read).Status);
    }

    [Fact]
    public async Task AnIrpWhoseCallerCancelled_IsNotReused()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("Echo")], IsolationModel.InKernel).Bounded();
        await using var echo = await kernel.OpenAsync(@"\Device\Echo").Bounded();
        using var cancel = new CancellationTokenSource();

        // Echo keeps a read pending until something is written; the caller gives up on it.
        var read = echo.ReadAsync(new byte[16], cancellationToken: cancel.Token);
        await cancel.CancelAsync();
        Assert.Equal(NtStatus.Cancelled, (await read.Bounded()).Status);

        Assert.Equal(NtStatus.Cancelled, TakeAgain(read).Status);
    }

    [Fact]
    public async Task AnIrpFinishedByItsHostsExit_IsNotReused()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("Echo") with { Recovery = new RecoveryPolicy { Restart = false } }], IsolationModel.Process).Bounded();
        await using var echo = await kernel.OpenAsync(@"\Device\Echo").Bounded();

        // The exit sweep finishes it, not its driver: a thread that still holds it (a failed
        // send, a completion on its way up) may act on it after the sweep.
        var read = echo.ReadAsync(new byte[16]);
        kernel.KillDriverHost("Echo");
        Assert.Equal(NtStatus.DriverProcessTerminated, (await read.Bounded()).Status);

        Assert.Equal(NtStatus.DriverProcessTerminated, TakeAgain(read).Status);
    }

    [Fact]
    public async Task ATracedIrp_IsNotReused()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.InKernel).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        kernel.Trace = new TraceRecorder();

        var read = nul.ReadAsync(new byte[8]);
        Assert.Equal(new IoResult(NtStatus.Success, 8), await read);

        Assert.Equal(new IoResult(NtStatus.Success, 8), TakeAgain(read));
    }

    /// <summary>The driver completes every Read twice and every Write's predecessor again, long
    /// after the kernel finished it: by then the kernel has reused those IRPs for the next
    /// requests. Every caller still gets its own first completion, and every other completion is
    /// refused.</summary>
    [Theory]
    [InlineData(IsolationModel.InKernel)]
    [InlineData(IsolationModel.Process)]
    public async Task CompletionsOfFinishedIrps_NeverReachTheRequestsThatReuseThem(IsolationModel model)
    {
        const int Requests = 300;

        // Refusals at this rate would get a host killed by default: here they are the test.
        await using var kernel = new Microkernel(new KernelOptions { MaxRefusalsPerSecond = 100_000 });
        await kernel.StartAsync([TestManifests.Test("DoubleComplete")], model).Bounded();
        await using var device = await kernel.OpenAsync(@"\Device\DoubleComplete").Bounded();

        for (var i = 0; i < Requests; i++)
        {
            var buffer = new byte[1 + (i % 64)];
            Assert.Equal(new IoResult(NtStatus.Success, buffer.Length), await device.ReadAsync(buffer).Bounded());
            Assert.All(buffer, b => Assert.Equal(0xAA, b));
            Assert.Equal(new IoResult(NtStatus.Success, i % 50), await device.WriteAsync(new byte[i % 50]).Bounded());
        }

        // A Read's second completion and every Write's but the last: refused, none delivered.
        await kernel.Events.WaitForCountAsync(e => e.Kind == KernelEventKind.CompletionRefused, (2 * Requests) - 1).Bounded();
        Assert.Equal((2 * Requests) - 1, kernel.Events.Count(KernelEventKind.CompletionRefused));
        Assert.Equal(0, kernel.DuplicateDeliveries);
        Assert.Equal(0, device.OutstandingRequests);
    }

    private static IoResult TakeAgain(ValueTask<IoResult> task) => task.GetAwaiter().GetResult();
}
