using System.Buffers.Binary;
using DriverIsolation.Disk;
using DriverIsolation.Drivers.XorFilter;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// The sample drivers' behaviour, written once and run in every isolation model (the three
/// subclasses below). The assertions are exact and the same in each model: isolation may change
/// where a driver runs, never what a caller sees.
/// </summary>
public abstract class SampleDriverBehaviour(KernelFixture fixture)
{
    protected KernelFixture Fixture { get; } = fixture;

    private Microkernel Kernel => Fixture.Kernel;

    [Fact]
    public async Task Null_ReadAndWrite_CompleteAtOnceWithFullLength()
    {
        await using var nul = await Kernel.OpenAsync(@"\??\NUL").Bounded();
        var buffer = new byte[512];
        buffer.AsSpan().Fill(0xFF);

        var read = await nul.ReadAsync(buffer).Bounded();
        var write = await nul.WriteAsync(new byte[100]).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 512), read);
        Assert.All(buffer, b => Assert.Equal(0, b));
        Assert.Equal(new IoResult(NtStatus.Success, 100), write);
        Assert.Equal(@"\Device\Null", nul.DeviceName);
    }

    [Fact]
    public async Task Open_UnknownName_ThrowsObjectNameNotFound()
    {
        var error = await Assert.ThrowsAsync<IoException>(() => Kernel.OpenAsync(@"\Device\NoSuchDevice")).Bounded();
        Assert.Equal(NtStatus.ObjectNameNotFound, error.Status);
    }

    [Fact]
    public async Task RamDisk_WriteThenReadThroughFilter_ReturnsWhatWasWritten()
    {
        await using var disk = await Kernel.OpenAsync(@"\??\RamDisk0").Bounded();
        var data = new byte[4096];
        new Random(42).NextBytes(data);

        var write = await disk.WriteAsync(data, offset: 8192).Bounded();
        var back = new byte[4096];
        var read = await disk.ReadAsync(back, offset: 8192).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 4096), write);
        Assert.Equal(new IoResult(NtStatus.Success, 4096), read);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task RamDisk_GeometryIoctl_ReturnsSectorSizeAndCount()
    {
        await using var disk = await Kernel.OpenAsync(@"\Device\RamDisk0").Bounded();
        var output = new byte[DiskGeometry.EncodedSize];

        var result = await disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, output).Bounded();
        var length = new byte[8];
        var lengthResult = await disk.DeviceIoControlAsync(DiskIoControl.GetLengthInfo, ReadOnlyMemory<byte>.Empty, length).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, DiskGeometry.EncodedSize), result);
        Assert.Equal(new DiskGeometry(512, 2048), DiskGeometry.Read(output));
        Assert.Equal(new IoResult(NtStatus.Success, 8), lengthResult);
        Assert.Equal(1L << 20, BinaryPrimitives.ReadInt64LittleEndian(length));
    }

    [Fact]
    public async Task RamDisk_BadRequests_FailWithTheRightStatus()
    {
        await using var disk = await Kernel.OpenAsync(@"\Device\RamDisk0").Bounded();

        var unaligned = await disk.ReadAsync(new byte[512], offset: 100).Bounded();
        var oddLength = await disk.WriteAsync(new byte[100], offset: 0).Bounded();
        var pastEnd = await disk.ReadAsync(new byte[512], offset: 1L << 20).Bounded();
        var overEnd = await disk.ReadAsync(new byte[1024], offset: (1L << 20) - 512).Bounded();
        var smallBuffer = await disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, new byte[4]).Bounded();
        var unknownIoctl = await disk.DeviceIoControlAsync(IoControlCode.Make(DeviceType.Disk, 0x7FF), ReadOnlyMemory<byte>.Empty, new byte[16]).Bounded();
        var flush = await disk.FlushAsync().Bounded();

        Assert.Equal(NtStatus.InvalidParameter, unaligned.Status);
        Assert.Equal(NtStatus.InvalidParameter, oddLength.Status);
        Assert.Equal(NtStatus.EndOfFile, pastEnd.Status);
        Assert.Equal(NtStatus.InvalidParameter, overEnd.Status);
        Assert.Equal(NtStatus.BufferTooSmall, smallBuffer.Status);
        Assert.Equal(NtStatus.InvalidDeviceRequest, unknownIoctl.Status);
        Assert.Equal(NtStatus.Success, flush.Status);
    }

    [Fact]
    public async Task RamDisk_Stack_IsXorFilterAboveRamDisk()
    {
        var device = Kernel.GetDevice(@"\??\RamDisk0");

        Assert.NotNull(device);
        Assert.Equal(["XorFilter", "RamDisk"], device.Stack.Select(l => l.Driver));
        Assert.Contains(@"\??\RamDisk0", device.Links);
    }

    [Fact]
    public async Task Echo_WriteThenRead_ReturnsTheMessage()
    {
        await using var echo = await Kernel.OpenAsync(@"\??\Echo").Bounded();

        var write = await echo.WriteAsync("hello"u8.ToArray()).Bounded();
        var buffer = new byte[64];
        var read = await echo.ReadAsync(buffer).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 5), write);
        Assert.Equal(new IoResult(NtStatus.Success, 5), read);
        Assert.Equal("hello"u8.ToArray(), buffer[..5]);
    }

    [Fact]
    public async Task Echo_ReadWithNothingQueued_StaysPendingUntilAWrite()
    {
        await using var reader = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        await using var writer = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        var buffer = new byte[64];

        var read = reader.ReadAsync(buffer);
        Assert.False(read.IsCompleted);
        Assert.Equal(1, reader.OutstandingRequests);

        var write = await writer.WriteAsync("wake up"u8.ToArray()).Bounded();
        var result = await read.Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 7), write);
        Assert.Equal(new IoResult(NtStatus.Success, 7), result);
        Assert.Equal("wake up"u8.ToArray(), buffer[..7]);
    }

    [Fact]
    public async Task Echo_PendingReadCancelledByCaller_CompletesCancelled()
    {
        await using var echo = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        using var cancel = new CancellationTokenSource();

        var read = echo.ReadAsync(new byte[16], cancellationToken: cancel.Token);
        await cancel.CancelAsync();
        var result = await read.Bounded();

        Assert.Equal(new IoResult(NtStatus.Cancelled, 0), result);
    }

    [Fact]
    public async Task Echo_HandleClosedWithReadPending_ReadCompletesCancelled()
    {
        var echo = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        var read = echo.ReadAsync(new byte[16]);

        var close = await echo.CloseAsync().Bounded();
        var result = await read.Bounded();

        Assert.Equal(NtStatus.Success, close.Status);
        Assert.Equal(new IoResult(NtStatus.Cancelled, 0), result);
        Assert.Equal(NtStatus.InvalidHandle, (await echo.ReadAsync(new byte[1]).Bounded()).Status);
    }

    [Fact]
    public async Task Echo_PendingReadPastItsDeadline_CompletesWithIoTimeout()
    {
        await using var echo = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        var timeout = Kernel.GetDevice(@"\??\Echo")!;
        Assert.NotNull(timeout);

        var read = echo.ReadAsync(new byte[16]);
        Fixture.Time.Advance(TimeSpan.FromSeconds(29));
        Assert.False(read.IsCompleted);
        Fixture.Time.Advance(TimeSpan.FromSeconds(2));
        var result = await read.Bounded();

        Assert.Equal(new IoResult(NtStatus.IoTimeout, 0), result);
        var timedOut = await Kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.IrpTimedOut && e.Driver == "Echo").Bounded();
        Assert.Contains("Read", timedOut.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DoubleComplete_SecondCompletionOfARead_IsRefusedAndTheCallerSeesTheFirst()
    {
        await using var device = await Kernel.OpenAsync(@"\Device\DoubleComplete").Bounded();
        var buffer = new byte[32];

        var result = await device.ReadAsync(buffer).Bounded();
        var refused = await Kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.Detail.Contains("already completed", StringComparison.Ordinal)).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 32), result);
        Assert.All(buffer, b => Assert.Equal(0xAA, b));
        Assert.NotNull(refused.IrpId);
        Assert.Contains("(with Success)", refused.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DoubleComplete_CompletingAnEarlierWriteAgain_IsRefusedAndChangesNothing()
    {
        await using var device = await Kernel.OpenAsync(@"\Device\DoubleComplete").Bounded();
        var refusedBefore = Kernel.Events.Count(KernelEventKind.CompletionRefused);

        var first = await device.WriteAsync(new byte[10]).Bounded();
        var second = await device.WriteAsync(new byte[20]).Bounded();
        var refused = await Kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.Detail.Contains("already completed", StringComparison.Ordinal)
            && Kernel.Events.Count(KernelEventKind.CompletionRefused) > refusedBefore).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 10), first);
        Assert.Equal(new IoResult(NtStatus.Success, 20), second);
        Assert.Equal(KernelEventKind.CompletionRefused, refused.Kind);
    }

    [Fact]
    public async Task Overstate_CompletionsThatLieAboutLengthOrSayPending_AreRefused()
    {
        await using var device = await Kernel.OpenAsync(@"\Device\Overstate").Bounded();
        var buffer = new byte[16];

        var result = await device.ReadAsync(buffer).Bounded();
        var overstated = await Kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.Detail.Contains("overstates the 16-byte buffer", StringComparison.Ordinal)).Bounded();
        var pending = await Kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.Detail.Contains("cannot carry Pending", StringComparison.Ordinal)).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 16), result);
        Assert.All(buffer, b => Assert.Equal(0x11, b));
        Assert.Equal(overstated.IrpId, pending.IrpId);
    }

    [Fact]
    public async Task Forger_CompletingIrpsItNeverGot_IsRefusedAndTheOwnerIsUnaffected()
    {
        await using var echo = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        await using var forger = await Kernel.OpenAsync(@"\Device\Forger").Bounded();
        var echoBuffer = new byte[16];
        var forgerBuffer = new byte[8];

        var echoRead = echo.ReadAsync(echoBuffer);
        var forged = await forger.ReadAsync(forgerBuffer).Bounded();
        var neverIssued = await Kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.Detail.Contains("never issued", StringComparison.Ordinal)).Bounded();
        var notOwned = await Kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.Detail.Contains("is held by", StringComparison.Ordinal)).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 8), forged);
        Assert.All(forgerBuffer, b => Assert.Equal(0x77, b));
        Assert.False(echoRead.IsCompleted);
        Assert.Equal(notOwned.IrpId + 1, neverIssued.IrpId - 1_000_000);

        var write = await echo.WriteAsync("mine"u8.ToArray()).Bounded();
        Assert.Equal(new IoResult(NtStatus.Success, 4), await echoRead.Bounded());
        Assert.Equal(new IoResult(NtStatus.Success, 4), write);
        Assert.Equal("mine"u8.ToArray(), echoBuffer[..4]);
    }

    [Fact]
    public async Task XorFilter_TransformsEveryWriteAndReadOnTheWayThrough()
    {
        await using var disk = await Kernel.OpenAsync(@"\Device\RamDisk0").Bounded();
        var stats = new byte[XorFilterIoControl.StatisticsSize];
        Assert.Equal(NtStatus.Success, (await disk.DeviceIoControlAsync(XorFilterIoControl.GetStatistics, ReadOnlyMemory<byte>.Empty, stats).Bounded()).Status);
        var (writesBefore, readsBefore) = (BinaryPrimitives.ReadInt64LittleEndian(stats), BinaryPrimitives.ReadInt64LittleEndian(stats.AsSpan(8)));

        await disk.WriteAsync(new byte[1024], offset: 4096).Bounded();
        await disk.ReadAsync(new byte[512], offset: 4096).Bounded();
        await disk.ReadAsync(new byte[512], offset: 1L << 20).Bounded();
        await disk.DeviceIoControlAsync(XorFilterIoControl.GetStatistics, ReadOnlyMemory<byte>.Empty, stats).Bounded();

        // The failed read (past the end) is not decrypted: nothing came back to transform.
        Assert.Equal(writesBefore + 1, BinaryPrimitives.ReadInt64LittleEndian(stats));
        Assert.Equal(readsBefore + 1, BinaryPrimitives.ReadInt64LittleEndian(stats.AsSpan(8)));
    }

    [Fact]
    public async Task Echo_CancelRacingAWrite_EveryReadCompletesOnceAndNoMessageIsLost()
    {
        await using var reader = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        await using var writer = await Kernel.OpenAsync(@"\??\Echo").Bounded();
        var refusedBefore = Kernel.Events.Count(KernelEventKind.CompletionRefused);
        var received = new List<byte>();

        for (var i = 0; i < 50; i++)
        {
            using var cancel = new CancellationTokenSource();
            var buffer = new byte[1];
            var read = reader.ReadAsync(buffer, cancellationToken: cancel.Token);
            await Task.WhenAll(Task.Run(cancel.Cancel), Task.Run(() => writer.WriteAsync(new[] { (byte)i }))).Bounded();
            var result = await read.Bounded();
            if (result.Status == NtStatus.Cancelled)
            {
                // The write was queued after the read gave up: the next read gets it at once.
                Assert.Equal(new IoResult(NtStatus.Success, 1), await reader.ReadAsync(buffer).Bounded());
            }
            else
            {
                Assert.Equal(new IoResult(NtStatus.Success, 1), result);
            }

            received.Add(buffer[0]);
        }

        Assert.Equal(Enumerable.Range(0, 50).Select(i => (byte)i), received);
        Assert.Equal(refusedBefore, Kernel.Events.Count(KernelEventKind.CompletionRefused));
    }

    [Fact]
    public async Task ManyConcurrentRequests_AllCompleteExactlyOnce()
    {
        await using var disk = await Kernel.OpenAsync(@"\Device\RamDisk0").Bounded();
        await using var nul = await Kernel.OpenAsync(@"\Device\Null").Bounded();

        var tasks = Enumerable.Range(0, 200).Select(i => i % 2 == 0
            ? disk.WriteAsync(new byte[512], offset: i * 512L).AsTask()
            : nul.ReadAsync(new byte[64]).AsTask()).ToList();
        var results = await Task.WhenAll(tasks).Bounded();

        Assert.All(results, r => Assert.Equal(NtStatus.Success, r.Status));
        Assert.Equal(0, disk.OutstandingRequests + nul.OutstandingRequests);
    }
}

[Collection("processes")]
public sealed class InKernelBehaviour(InKernelFixture fixture) : SampleDriverBehaviour(fixture), IClassFixture<InKernelFixture>
{
    [Fact]
    public void Drivers_RunInTheKernelProcess()
    {
        Assert.All(Fixture.Kernel.GetDrivers(), d => Assert.Equal(Microkernel.ProcessId, d.ProcessId));
    }
}

[Collection("processes")]
public sealed class SharedHostBehaviour(SharedHostFixture fixture) : SampleDriverBehaviour(fixture), IClassFixture<SharedHostFixture>
{
    [Fact]
    public void Drivers_ShareOneHostProcessThatIsNotTheKernel()
    {
        var pids = Fixture.Kernel.GetDrivers().Select(d => d.ProcessId).Distinct().ToList();

        var pid = Assert.Single(pids);
        Assert.NotEqual(Microkernel.ProcessId, pid);
        Assert.False(System.Diagnostics.Process.GetProcessById(pid).HasExited);
    }
}

[Collection("processes")]
public sealed class ProcessBehaviour(ProcessFixture fixture) : SampleDriverBehaviour(fixture), IClassFixture<ProcessFixture>
{
    [Fact]
    public void Drivers_EachRunInTheirOwnProcess()
    {
        var drivers = Fixture.Kernel.GetDrivers();
        var pids = drivers.Select(d => d.ProcessId).ToList();

        Assert.Equal(drivers.Count, pids.Distinct().Count());
        Assert.DoesNotContain(Microkernel.ProcessId, pids);
    }

    [Fact]
    public void FilterStack_SpansTwoHostProcesses()
    {
        var stack = Fixture.Kernel.GetDevice(@"\Device\RamDisk0")!.Stack;

        Assert.Equal(2, stack.Count);
        Assert.NotEqual(stack[0].ProcessId, stack[1].ProcessId);
    }
}
