using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>The I/O manager's own bookkeeping, on its own: the deadline queue (one timer for
/// every IRP, exact under a fake clock) and the IRP table (lookup by id, growth, long-lived IRPs,
/// the memory of finished ones).</summary>
public sealed class IrpBookkeepingTests
{
    private static readonly FileObject File = new(1, new KernelDevice(@"\Device\Test", DeviceType.Null, TimeSpan.FromSeconds(30)), @"\Device\Test");

    private static KernelIrp Irp(long id) =>
        KernelIrp.Rent(id, File, MajorFunction.Read, 0, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, manager: null);

    [Fact]
    public void Deadlines_ExpireExactlyAtTheirTime_PerTimeout_AndNotOnceRemoved()
    {
        var clock = new FakeTimeProvider();
        var expired = new List<(long Id, TimeSpan At)>();
        var start = clock.GetUtcNow();
        using var queue = new DeadlineQueue(clock, irp => expired.Add((irp.Id, clock.GetUtcNow() - start)));

        queue.Add(Irp(1), TimeSpan.FromSeconds(30));
        clock.Advance(TimeSpan.FromSeconds(1));
        queue.Add(Irp(2), TimeSpan.FromSeconds(30));
        queue.Add(Irp(3), TimeSpan.FromSeconds(5));   // a shorter timeout: expires first
        var removed = Irp(4);
        queue.Add(removed, TimeSpan.FromSeconds(2));  // completes before its deadline
        queue.Add(Irp(5), Timeout.InfiniteTimeSpan);  // never expires
        queue.Remove(removed);
        Assert.Equal(3, queue.Count);

        // Step by step: nothing before its deadline, each at it (1 tick before: not yet).
        clock.Advance(TimeSpan.FromSeconds(5) - TimeSpan.FromTicks(1));
        Assert.Empty(expired);
        clock.Advance(TimeSpan.FromTicks(1));
        Assert.Equal([(3L, TimeSpan.FromSeconds(6))], expired);
        clock.Advance(TimeSpan.FromSeconds(24) - TimeSpan.FromTicks(1));
        Assert.Single(expired);
        clock.Advance(TimeSpan.FromTicks(1));
        Assert.Equal((1L, TimeSpan.FromSeconds(30)), expired[^1]);
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal([3L, 1L, 2L], expired.Select(e => e.Id));
        Assert.Equal(TimeSpan.FromSeconds(31), expired[^1].At);
        Assert.Equal(0, queue.Count);

        // One long step expires every IRP whose deadline it passes, in one go.
        queue.Add(Irp(6), TimeSpan.FromSeconds(3));
        queue.Add(Irp(7), TimeSpan.FromSeconds(4));
        clock.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal([3L, 1L, 2L, 6L, 7L], expired.Select(e => e.Id));
    }

    [Fact]
    public void Table_FindsEveryIrpInFlight_AcrossGrowthAndLongLivedIrps_AndRemembersFinished()
    {
        var table = new IrpTable(finishedMemory: 16);

        // IRP 1 stays in flight while far more than the table's largest size are issued after it.
        var longLived = Irp(1);
        table.Add(longLived);
        var inFlight = new Queue<KernelIrp>();
        for (long id = 2; id < 2 + (IrpTable.MaxSlots * 2) + 7; id++)
        {
            var irp = Irp(id);
            table.Add(irp);
            inFlight.Enqueue(irp);
            if (inFlight.Count > 300)
            {
                var done = inFlight.Dequeue();
                Assert.True(table.TryGet(done.Id, out var found) && found == done);
                Assert.True(table.Finish(done, NtStatus.Success));
            }
        }

        Assert.Equal(inFlight.Count + 1, table.Count);
        Assert.True(table.TryGet(1, out var one) && one == longLived);
        Assert.All(inFlight, irp => Assert.True(table.TryGet(irp.Id, out var found) && found == irp));
        Assert.Equal(inFlight.Count + 1, table.Snapshot().Count);

        // Finished: gone from the table, remembered with its status, and a second finish is caught.
        Assert.True(table.Finish(longLived, NtStatus.IoTimeout));
        Assert.False(table.TryGet(1, out _));
        Assert.True(table.TryGetFinished(1, out var status));
        Assert.Equal(NtStatus.IoTimeout, status);
        Assert.False(table.Finish(longLived, NtStatus.Success));
        Assert.False(table.TryGet(0, out _));
        Assert.False(table.TryGetFinished(-5, out _));
        Assert.Equal(inFlight.Count, table.Count);
    }

    [Fact]
    public async Task DeviceStatistics_CountEveryRequestByItsFinalStatus()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("Echo")], IsolationModel.InKernel).Bounded();
        await using var echo = await kernel.OpenAsync(@"\Device\Echo").Bounded();
        Assert.Equal(new IoResult(NtStatus.Success, 5), await echo.WriteAsync("hello"u8.ToArray()).Bounded());
        Assert.Equal(new IoResult(NtStatus.Success, 5), await echo.ReadAsync(new byte[16]).Bounded());
        using var cancel = new CancellationTokenSource();
        var pending = echo.ReadAsync(new byte[16], cancellationToken: cancel.Token);
        await cancel.CancelAsync();
        Assert.Equal(NtStatus.Cancelled, (await pending.Bounded()).Status);

        // The Create, the Write and the first Read succeeded; the second Read was cancelled.
        var counted = kernel.GetDevice(@"\Device\Echo")!.CompletedByStatus;
        Assert.Equal(3, counted[NtStatus.Success]);
        Assert.Equal(1, counted[NtStatus.Cancelled]);
        Assert.Equal(2, counted.Count);
    }
}
