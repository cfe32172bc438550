using DriverIsolation.Kernel;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>
/// <see cref="IRingCompanion"/>: work the kernel's ring reader of a host does while it spins
/// (<see cref="Microkernel.AttachRingCompanion"/>). A real Null host on the ring; a probe for a
/// companion.
/// </summary>
[Collection("processes")]
public sealed class RingCompanionTests
{
    [Fact]
    public async Task ACompanion_IsPolledWhileTheReaderSpins_ToldWhenItSleeps_AndDetachedWhenItThrowsOrTheHostDies()
    {
        await using var kernel = new Microkernel(new KernelOptions { Transport = Transport.Ring, HeartbeatPeriod = null, WarmPoolSize = 0 });
        await kernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        var buffer = new byte[16];

        Assert.Null(kernel.AttachRingCompanion(@"\Device\NoSuchDevice", new Probe()));
        var probe = new Probe();
        using (var attachment = kernel.AttachRingCompanion(@"\??\NUL", probe))
        {
            Assert.NotNull(attachment);
            Assert.Null(kernel.AttachRingCompanion(@"\??\NUL", new Probe())); // one per reader

            // A request's answer wakes the reader; it spins, polling, then says it sleeps.
            Assert.True((await nul.ReadAsync(buffer).Bounded()).IsSuccess);
            await probe.Polled.Task.Bounded();
            await probe.Released.Task.Bounded();
            Assert.False(probe.Detached.Task.IsCompleted);
        }

        // Disposing the attachment detaches it, and the reader is free for another.
        await probe.Detached.Task.Bounded();
        var throwing = new Probe { Throws = true };
        Assert.NotNull(kernel.AttachRingCompanion(@"\??\NUL", throwing));

        // One that throws is detached; the host is served on as before.
        Assert.True((await nul.ReadAsync(buffer).Bounded()).IsSuccess);
        await throwing.Detached.Task.Bounded();
        Assert.True((await nul.ReadAsync(buffer).Bounded()).IsSuccess);
        Assert.Equal(0, kernel.GetDrivers().Single().Restarts);

        // The host killed: its reader's companion is detached.
        var last = new Probe();
        Assert.NotNull(kernel.AttachRingCompanion(@"\??\NUL", last));
        kernel.KillDriverHost("Null");
        await last.Detached.Task.Bounded();

        // Each told once (the kill's abort and the close that follows both look for a companion).
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();
        Assert.Equal([1, 1, 1], new[] { probe.Detaches, throwing.Detaches, last.Detaches });
    }

    [Fact]
    public async Task NoCompanion_WhereTheHostIsNotOnTheRing_OrThereIsNoHost()
    {
        await using (var pipe = new Microkernel(new KernelOptions { Transport = Transport.Pipe, HeartbeatPeriod = null, WarmPoolSize = 0 }))
        {
            await pipe.StartAsync([TestManifests.Sample("Null")], IsolationModel.Process).Bounded();
            Assert.Null(pipe.AttachRingCompanion(@"\??\NUL", new Probe()));
        }

        await using var inKernel = new Microkernel(new KernelOptions { Transport = Transport.Ring, HeartbeatPeriod = null, WarmPoolSize = 0 });
        await inKernel.StartAsync([TestManifests.Sample("Null")], IsolationModel.InKernel).Bounded();
        Assert.Null(inKernel.AttachRingCompanion(@"\??\NUL", new Probe()));
    }

    private sealed class Probe : IRingCompanion
    {
        public bool Throws { get; init; }

        public TaskCompletionSource Polled { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Released { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Detached { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public bool Poll()
        {
            Polled.TrySetResult();
            return Throws ? throw new InvalidOperationException("a companion that fails") : false;
        }

        void IRingCompanion.Released() => Released.TrySetResult();

        public int Detaches => Volatile.Read(ref _detaches);

        private int _detaches;

        void IRingCompanion.Detached()
        {
            Interlocked.Increment(ref _detaches);
            Detached.TrySetResult();
        }
    }
}
