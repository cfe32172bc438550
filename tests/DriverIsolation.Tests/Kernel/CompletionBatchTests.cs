using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// <see cref="CompletionBatch"/>: work a continuation leaves to a host's reader. The first tests
/// drive the batch by hand on one thread; the last runs real reads through a real host over the
/// ring, whose continuations run on the kernel's reader.
/// </summary>
[Collection("processes")]
public sealed class CompletionBatchTests
{
    [Fact]
    public Task OnlyAThreadInABatchLeavesWork_AndAFlushRunsItInOrder_OnceEach() => OnOwnThread(() =>
    {
        var ran = new List<string>();
        var batch = new CompletionBatch();
        Assert.False(CompletionBatch.TryDefer(() => ran.Add("before")));

        batch.Enter();
        Assert.True(CompletionBatch.TryDefer(() => ran.Add("a")));
        Assert.True(CompletionBatch.TryDefer(() => ran.Add("b")));
        CompletionBatch.Leave();
        Assert.False(CompletionBatch.TryDefer(() => ran.Add("left")));
        Assert.True(batch.Pending);
        Assert.Empty(ran);

        batch.Flush(ex => throw new InvalidOperationException("no flush fails here", ex));
        Assert.Equal(["a", "b"], ran);
        Assert.False(batch.Pending);

        // Nothing left: a second flush runs nothing again.
        batch.Flush(ex => throw new InvalidOperationException("no flush fails here", ex));
        Assert.Equal(["a", "b"], ran);
    });

    [Fact]
    public Task AFlushThatThrows_IsReported_AndTheOthersStillRun_AndWorkFinishedDuringAFlushIsNotLeft() => OnOwnThread(() =>
    {
        var ran = new List<string>();
        var failures = new List<Exception>();
        var batch = new CompletionBatch();
        batch.Enter();
        Assert.True(CompletionBatch.TryDefer(() => throw new InvalidOperationException("broken")));
        Assert.True(CompletionBatch.TryDefer(() =>
        {
            // A flush that finishes more work does it itself: no batch takes work during a flush.
            ran.Add(CompletionBatch.TryDefer(() => ran.Add("left during the flush")) ? "deferred" : "done at once");
        }));
        Assert.True(CompletionBatch.TryDefer(() => ran.Add("last")));

        batch.Flush(failures.Add);
        Assert.Equal(["done at once", "last"], ran);
        Assert.Equal("broken", Assert.Single(failures).Message);
        Assert.False(batch.Pending);

        // The thread is in the batch again after the flush, as it was before it.
        Assert.True(CompletionBatch.TryDefer(() => ran.Add("after")));
        CompletionBatch.Leave();
        batch.Flush(failures.Add);
        Assert.Equal(["done at once", "last", "after"], ran);
    });

    [Fact]
    public Task WorkLeftByAContinuationOnTheReader_RunsThereOnceTheReaderHasNoFrameWaiting_WithoutAnotherFrame() => Task.Run(async () =>
    {
        await using var kernel = new Microkernel(new KernelOptions
        {
            HeartbeatPeriod = null,
            InlineCompletions = true,
            Transport = Transport.Ring,
            WarmPoolSize = 0,
        });
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();

        // Off the reader (on the pool), nobody takes the work. (This test's own code may run on
        // the reader now: the open's continuation did.)
        Assert.False(await Task.Run(() => CompletionBatch.TryDefer(() => { })).Bounded());

        // Reads one at a time until one's continuation runs on the reader (a read can complete
        // before its await, and then continues where it was issued). Its flush must run on the
        // reader after the continuation returned, though no frame comes after it.
        for (var attempt = 0; ; attempt++)
        {
            Assert.True(attempt < 100, "no read's continuation ran on the kernel's reader in 100 attempts");
            var flushed = new TaskCompletionSource<(int Thread, bool AfterContinuation)>(TaskCreationOptions.RunContinuationsAsynchronously);
            var returned = false;
            var continuation = await Task.Run(async () =>
            {
                var result = await nul.ReadAsync(new byte[512]);
                Assert.Equal(NtStatus.Success, result.Status);
                var thread = Environment.CurrentManagedThreadId;
                var deferred = CompletionBatch.TryDefer(() => flushed.TrySetResult((Environment.CurrentManagedThreadId, Volatile.Read(ref returned))));
                Assert.Equal(InlineCompletion.RunningOnReader, deferred);
                Volatile.Write(ref returned, true);
                return (deferred, thread);
            }).Bounded();

            if (!continuation.deferred)
            {
                continue;
            }

            var (flushThread, afterContinuation) = await flushed.Task.Bounded();
            Assert.Equal(continuation.thread, flushThread);
            Assert.True(afterContinuation, "the flush ran before the continuation that left it returned");
            break;
        }

        // A burst: every continuation's work is done once, on the reader or at once (the last
        // flushes run on the reader after the reads' tasks have finished: wait for the count).
        var done = 0;
        var allDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void Done()
        {
            if (Interlocked.Increment(ref done) == 64)
            {
                allDone.SetResult();
            }
        }

        var reads = Enumerable.Range(0, 64).Select(_ => Task.Run(async () =>
        {
            var result = await nul.ReadAsync(new byte[512]);
            Assert.Equal(NtStatus.Success, result.Status);
            if (!CompletionBatch.TryDefer(Done))
            {
                Done();
            }
        }));
        await Task.WhenAll(reads).Bounded();
        await allDone.Task.Bounded();
        Assert.Equal(64, Volatile.Read(ref done));
        Assert.Equal(0, kernel.OutstandingIrps);
    });

    [Fact]
    public Task WorkLeftToAReaderThatAContinuationHolds_RunsOnThePoolOnceTheReaderIsHandedOff_NotWhenItLetsGo() => Task.Run(async () =>
    {
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(new KernelOptions
        {
            HeartbeatPeriod = null,
            InlineCompletions = true,
            Transport = Transport.Ring,
            WarmPoolSize = 0,
            InlineStall = TimeSpan.FromMilliseconds(20),
        }, timeProvider: time);
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        await Task.Yield();

        // A continuation on the reader leaves work to it, then holds it.
        using var release = new ManualResetEventSlim();
        var left = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<IoResult>? held = null;
        for (var attempt = 0; held is null; attempt++)
        {
            Assert.True(attempt < 100, "no read's continuation ran on the kernel's reader in 100 attempts");
            var holding = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            var read = Task.Run(async () =>
            {
                var result = await nul.ReadAsync(new byte[512]);
                var deferred = CompletionBatch.TryDefer(() => left.TrySetResult(release.IsSet));
                holding.TrySetResult(deferred);
                if (deferred)
                {
                    release.Wait(TimeSpan.FromSeconds(60));
                }

                return result;
            });
            if (await holding.Task.Bounded())
            {
                held = read;
            }
            else
            {
                await read.Bounded();
            }
        }

        // Not run while the reader is held, short of the stall time...
        time.Advance(TimeSpan.FromMilliseconds(19));
        Assert.False(left.Task.IsCompleted);

        // ...and run at the hand-off, while the continuation still holds the old reader.
        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.False(await left.Task.Bounded(), "the work ran only once the continuation let go");
        Assert.Equal(1, kernel.ReaderHandoffs("Null"));
        release.Set();
        Assert.Equal(NtStatus.Success, (await held.Bounded()).Status);
    });

    /// <summary>On a thread of its own: the batch is per thread, and a test must not leave one open on xUnit's.</summary>
    private static Task OnOwnThread(Action test)
    {
        var finished = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                test();
                finished.SetResult();
            }
#pragma warning disable CA1031 // Handed to the test's task.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                finished.SetException(ex);
            }
        });
        thread.Start();
        return finished.Task.Bounded();
    }
}
