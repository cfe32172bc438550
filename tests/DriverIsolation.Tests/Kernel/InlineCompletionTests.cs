using DriverIsolation.Kernel;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// With <see cref="KernelOptions.InlineCompletions"/> a caller's continuation runs on the kernel's
/// reader of the host that completed its IRP. A continuation that blocks holds that reader only
/// until the stall time, then a new reader serves the host's other completions; an IRP finished
/// anywhere else (here: its deadline, on the clock's thread) gets its continuation on the pool.
/// Real hosts over the ring; the clock is fake.
/// </summary>
[Collection("processes")]
public sealed class InlineCompletionTests
{
    [Fact]
    public async Task AContinuationThatBlocks_HoldsTheReaderUntilTheStallTime_ThenANewReaderServesTheHost()
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(Options(), timeProvider: time);
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();

        // The code after that await runs on the kernel's reader of the Null host (the open's
        // completion came there), and below this test blocks: leave the reader first.
        await Task.Yield();

        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var first = Task.Run(async () =>
        {
            var result = await nul.ReadAsync(new byte[512]);

            // On the kernel's reader of the Null host now: hold it.
            entered.Set();
            release.Wait(TimeSpan.FromSeconds(60));
            return result;
        });
        Assert.True(entered.Wait(TimeSpan.FromSeconds(30)), "the first read did not complete");

        // The second read's completion waits behind the blocked continuation: not at 19 ms...
        var second = nul.ReadAsync(new byte[512]);
        time.Advance(TimeSpan.FromMilliseconds(19));
        Assert.Equal(0, kernel.ReaderHandoffs("Null"));
        Assert.False(second.IsCompleted);

        // ...at 20 ms a new reader takes over, and it completes while the first still blocks.
        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(new IoResult(NtStatus.Success, 512), await second.Bounded());
        Assert.Equal(1, kernel.ReaderHandoffs("Null"));
        Assert.False(first.IsCompleted);

        // The blocked continuation ends on its own thread, which reads no more; the new reader
        // serves everything after it.
        release.Set();
        Assert.Equal(new IoResult(NtStatus.Success, 512), await first.Bounded());
        var rest = await Task.WhenAll(Enumerable.Range(0, 32).Select(_ => nul.ReadAsync(new byte[512]))).Bounded();
        Assert.All(rest, r => Assert.Equal(new IoResult(NtStatus.Success, 512), r));
        Assert.Equal(1, kernel.ReaderHandoffs("Null"));
        Assert.Equal(0, kernel.OutstandingIrps);
    }

    [Fact]
    public async Task AnIrpFinishedOnItsDeadline_GetsItsContinuationOnThePool_NotOnTheClocksThread()
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(Options(), timeProvider: time);
        await kernel.StartAsync([TestManifests.Test("Hang")], IsolationModel.Process).Bounded();
        await using var hang = await kernel.OpenAsync(@"\Device\Hang").Bounded();

        var advancing = new Advancing(Environment.CurrentManagedThreadId);
        var read = hang.ReadAsync(new byte[16]);
        var observed = read.ContinueWith(
            t => (t.Result, OnTheClock: advancing.Now && Environment.CurrentManagedThreadId == advancing.Thread),
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);

        // The Hang driver's deadline is 2 s: the kernel completes the read when the clock gets there.
        advancing.Now = true;
        time.Advance(TimeSpan.FromSeconds(2));
        advancing.Now = false;

        var (result, onTheClock) = await observed.Bounded();
        Assert.Equal(NtStatus.IoTimeout, result.Status);
        Assert.False(onTheClock, "the caller's continuation ran inside the clock's callback");
    }

    private static KernelOptions Options() => new()
    {
        // No heartbeats under a fake clock; the stall time as by default, said here for the test.
        HeartbeatPeriod = null,
        InlineCompletions = true,
        Transport = Transport.Ring,
        WarmPoolSize = 0,
        InlineStall = TimeSpan.FromMilliseconds(20),
    };

    private sealed class Advancing(int thread)
    {
        public int Thread { get; } = thread;

        public volatile bool Now;
    }
}
