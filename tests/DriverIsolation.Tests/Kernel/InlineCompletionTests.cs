using DriverIsolation.Kernel;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// With <see cref="KernelOptions.InlineCompletions"/> a caller's continuation runs on the kernel's
/// reader of the host that completed its IRP. A continuation that blocks holds that reader only
/// until the stall time, then a new reader serves the host's other completions (and the new reader
/// is handed off in turn if a continuation blocks it); an IRP finished anywhere else (here: its
/// deadline, on the clock's thread) gets its continuation on the pool. Real hosts over the ring;
/// the clock is fake. The tests run off xUnit's synchronization context, as an application would.
/// </summary>
[Collection("processes")]
public sealed class InlineCompletionTests
{
    private static readonly IoResult Read512 = new(NtStatus.Success, 512);

    /// <param name="idleFirst">The reader idles for 100 ms first: the stall watch, which stops
    /// when it finds nothing running, must start again with the continuation that blocks.</param>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public Task AContinuationThatBlocks_HoldsTheReaderUntilTheStallTime_ThenANewReaderServesTheHost(bool idleFirst) => Task.Run(async () =>
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(Options(), timeProvider: time);
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        await Task.Yield();

        // The open's continuation (this method, up to the yield) ran on the reader, which may not
        // have taken back its running marker yet: a clock advanced before that would find that
        // continuation running for as long as the clock moved, and hand the reader off.
        Assert.True(SpinWait.SpinUntil(() => !kernel.ReaderRunningInline("Null"), Waits.Default));
        if (idleFirst)
        {
            time.Advance(TimeSpan.FromMilliseconds(100));
        }

        using var release = new ManualResetEventSlim();
        var first = await BlockOnTheReaderAsync(nul, release);

        // The second read's completion waits behind the blocked continuation: not at 19 ms...
        var second = nul.ReadAsync(new byte[512]);
        time.Advance(TimeSpan.FromMilliseconds(19));
        Assert.Equal(0, kernel.ReaderHandoffs("Null"));
        Assert.False(second.IsCompleted);

        // ...at 20 ms a new reader takes over, and it completes while the first still blocks.
        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(Read512, await second.Bounded());
        Assert.Equal(1, kernel.ReaderHandoffs("Null"));
        Assert.False(first.IsCompleted);

        // The blocked continuation ends on its own thread, which reads no more; the new reader
        // serves everything after it.
        release.Set();
        Assert.Equal(Read512, await first.Bounded());
        var rest = await Task.WhenAll(Enumerable.Range(0, 32).Select(_ => nul.ReadAsync(new byte[512]).AsTask())).Bounded();
        Assert.All(rest, r => Assert.Equal(Read512, r));
        Assert.Equal(1, kernel.ReaderHandoffs("Null"));
        Assert.True(kernel.CompletedInline("Null") >= 34, $"{kernel.CompletedInline("Null")} continuations ran on the reader");
        Assert.Equal(0, kernel.OutstandingIrps);
    });

    [Fact]
    public Task TheNewReader_IsHandedOffInTurn_WhenItsOwnContinuationBlocks_AfterTheFirstOneReturned() => Task.Run(async () =>
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(Options(), timeProvider: time);
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        await Task.Yield();

        // A blocks reader 0; at 20 ms reader 1 takes over.
        using var releaseA = new ManualResetEventSlim();
        var a = await BlockOnTheReaderAsync(nul, releaseA);
        time.Advance(TimeSpan.FromMilliseconds(20));
        Assert.Equal(1, kernel.ReaderHandoffs("Null"));

        // B blocks reader 1; then A returns (reader 0 ends, and must not take B's stall for its own).
        using var releaseB = new ManualResetEventSlim();
        var b = await BlockOnTheReaderAsync(nul, releaseB);
        releaseA.Set();
        Assert.Equal(Read512, await a.Bounded());

        // 20 ms on, reader 2 takes over from B, and serves C.
        var c = nul.ReadAsync(new byte[512]);
        time.Advance(TimeSpan.FromMilliseconds(20));
        Assert.Equal(Read512, await c.Bounded());
        Assert.Equal(2, kernel.ReaderHandoffs("Null"));
        Assert.False(b.IsCompleted);
        releaseB.Set();
        Assert.Equal(Read512, await b.Bounded());
    });

    [Fact]
    public Task AnIrpFinishedOnItsDeadline_GetsItsContinuationOnThePool_NotOnTheClocksThread() => Task.Run(async () =>
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(Options(), timeProvider: time);
        await kernel.StartAsync([TestManifests.Test("Hang")], IsolationModel.Process).Bounded();
        await using var hang = await kernel.OpenAsync(@"\Device\Hang").Bounded();
        await Task.Yield();

        var advancing = new Advancing(Environment.CurrentManagedThreadId);
        var read = hang.ReadAsync(new byte[16]).AsTask();
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
    });

    /// <summary>Reads until a read's continuation runs on the kernel's reader (a read can complete
    /// before its await, and then continues where it was issued), and blocks
    /// that reader until <paramref name="release"/> is set. Returns once it blocks; the task ends
    /// when the continuation does.</summary>
    private static async Task<Task<IoResult>> BlockOnTheReaderAsync(DeviceHandle nul, ManualResetEventSlim release)
    {
        for (var attempt = 0; attempt < 100; attempt++)
        {
            var blocking = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            var read = Task.Run(async () =>
            {
                var result = await nul.ReadAsync(new byte[512]);
                var onReader = InlineCompletion.RunningOnReader;
                blocking.TrySetResult(onReader);
                if (onReader)
                {
                    release.Wait(TimeSpan.FromSeconds(60));
                }

                return result;
            });
            if (await blocking.Task.Bounded())
            {
                return read;
            }

            await read.Bounded();
        }

        throw new InvalidOperationException("no read's continuation ran on the kernel's reader in 100 attempts");
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
