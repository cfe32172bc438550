using System.Text;
using DriverIsolation.Disk;
using DriverIsolation.Drivers.XorFilter;
using DriverIsolation.Kernel;

namespace DriverIsolation.Cli.Demo;

/// <summary>
/// The demo's mixed workload, through the client API only: zero reads and writes on Null,
/// verified block writes and reads through the XorFilter → RamDisk stack, echo round trips with a
/// pending read and a cancelled one; on the simulated hardware, verified transfers of several
/// sizes through VBlock (queues and buffers in DMA memory, through the IOMMU) and frames both
/// ways between the two NICs wired back to back. Each device's requests run a few at a time.
/// </summary>
internal sealed class DemoWorkload(Microkernel kernel, LatencyRecorder recorder, int requests, int seed)
{
    private const int InFlight = 4;
    private const int BlockSize = 4096;
    private readonly List<string> _problems = [];
    private int _verifiedBlocks;
    private int _verifiedMessages;
    private int _verifiedTransfers;
    private int _verifiedFrames;

    public IReadOnlyList<string> Problems => _problems;

    public int VerifiedBlocks => _verifiedBlocks;

    public int VerifiedMessages => _verifiedMessages;

    /// <summary>VBlock writes whose data read back the same.</summary>
    public int VerifiedTransfers => _verifiedTransfers;

    /// <summary>Frames that arrived at the other NIC whole.</summary>
    public int VerifiedFrames => _verifiedFrames;

    public (long Writes, long Reads) FilterStatistics { get; private set; }

    public async Task RunAsync()
    {
        await Task.WhenAll(NullAsync(), DiskAsync(), EchoAsync(), BlockDeviceAsync(), NicsAsync()).ConfigureAwait(false);
    }

    private async Task NullAsync()
    {
        await using var nul = await kernel.OpenAsync(@"\??\NUL").ConfigureAwait(false);
        var buffers = Enumerable.Range(0, InFlight).Select(_ => new byte[512]).ToArray();
        await ForEachAsync(requests, async (i, slot) =>
        {
            var result = i % 2 == 0
                ? await recorder.TimeAsync(nul.DeviceName, () => nul.ReadAsync(buffers[slot])).ConfigureAwait(false)
                : await recorder.TimeAsync(nul.DeviceName, () => nul.WriteAsync(buffers[slot])).ConfigureAwait(false);
            Expect(result, new IoResult(NtStatus.Success, 512), $"Null request {i}");
        }).ConfigureAwait(false);
    }

    private async Task DiskAsync()
    {
        await using var disk = await kernel.OpenAsync(@"\??\RamDisk0").ConfigureAwait(false);
        var geometryBytes = new byte[DiskGeometry.EncodedSize];
        Expect(await recorder.TimeAsync(disk.DeviceName, () => disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, geometryBytes)).ConfigureAwait(false),
            new IoResult(NtStatus.Success, DiskGeometry.EncodedSize), "disk geometry");
        var geometry = DiskGeometry.Read(geometryBytes);
        var blocks = (int)(geometry.LengthBytes / BlockSize);
        var before = await ReadFilterStatisticsAsync(disk).ConfigureAwait(false);

        // Each slot owns a disjoint set of blocks, so a read always checks its own slot's write.
        await ForEachAsync(requests / 2, async (i, slot) =>
        {
            var random = new Random(HashCode.Combine(seed, i));
            var block = (random.Next(blocks / InFlight) * InFlight) + slot;
            var data = new byte[BlockSize];
            random.NextBytes(data);
            var write = await recorder.TimeAsync(disk.DeviceName, () => disk.WriteAsync(data, (long)block * BlockSize)).ConfigureAwait(false);
            Expect(write, new IoResult(NtStatus.Success, BlockSize), $"disk write of block {block}");
            var back = new byte[BlockSize];
            var read = await recorder.TimeAsync(disk.DeviceName, () => disk.ReadAsync(back, (long)block * BlockSize)).ConfigureAwait(false);
            Expect(read, new IoResult(NtStatus.Success, BlockSize), $"disk read of block {block}");
            if (back.AsSpan().SequenceEqual(data))
            {
                Interlocked.Increment(ref _verifiedBlocks);
            }
            else
            {
                Problem($"block {block} read back different data");
            }
        }).ConfigureAwait(false);

        Expect(await recorder.TimeAsync(disk.DeviceName, () => disk.FlushAsync()).ConfigureAwait(false), new IoResult(NtStatus.Success, 0), "disk flush");
        var after = await ReadFilterStatisticsAsync(disk).ConfigureAwait(false);
        FilterStatistics = (after.Writes - before.Writes, after.Reads - before.Reads);
    }

    /// <summary>The XorFilter's own control code: how many writes and reads it has transformed.</summary>
    private async Task<(long Writes, long Reads)> ReadFilterStatisticsAsync(DeviceHandle disk)
    {
        var stats = new byte[XorFilterIoControl.StatisticsSize];
        Expect(await recorder.TimeAsync(disk.DeviceName, () => disk.DeviceIoControlAsync(XorFilterIoControl.GetStatistics, ReadOnlyMemory<byte>.Empty, stats)).ConfigureAwait(false),
            new IoResult(NtStatus.Success, XorFilterIoControl.StatisticsSize), "filter statistics");
        return (BitConverter.ToInt64(stats, 0), BitConverter.ToInt64(stats, 8));
    }

    private async Task EchoAsync()
    {
        await using var writer = await kernel.OpenAsync(@"\??\Echo").ConfigureAwait(false);
        await using var reader = await kernel.OpenAsync(@"\??\Echo").ConfigureAwait(false);
        var name = writer.DeviceName;

        // A read that waits: pending until the write after it.
        var waiting = new byte[64];
        var pending = recorder.TimeAsync(name, () => reader.ReadAsync(waiting));
        Expect(await recorder.TimeAsync(name, () => writer.WriteAsync("first"u8.ToArray())).ConfigureAwait(false), new IoResult(NtStatus.Success, 5), "echo write");
        Expect(await pending.ConfigureAwait(false), new IoResult(NtStatus.Success, 5), "pending echo read");

        // A read that is cancelled while it waits.
        using (var cancel = new CancellationTokenSource())
        {
            var doomed = recorder.TimeAsync(name, () => reader.ReadAsync(new byte[64], cancellationToken: cancel.Token));
            await cancel.CancelAsync().ConfigureAwait(false);
            Expect(await doomed.ConfigureAwait(false), new IoResult(NtStatus.Cancelled, 0), "cancelled echo read");
        }

        for (var i = 0; i < requests / 2; i++)
        {
            var message = Encoding.ASCII.GetBytes($"message {i} (seed {seed})");
            Expect(await recorder.TimeAsync(name, () => writer.WriteAsync(message)).ConfigureAwait(false), new IoResult(NtStatus.Success, message.Length), $"echo write {i}");
            var back = new byte[64];
            var read = await recorder.TimeAsync(name, () => reader.ReadAsync(back)).ConfigureAwait(false);
            Expect(read, new IoResult(NtStatus.Success, message.Length), $"echo read {i}");
            if (back.AsSpan(0, (int)Math.Min(read.Information, back.Length)).SequenceEqual(message))
            {
                Interlocked.Increment(ref _verifiedMessages);
            }
            else
            {
                Problem($"echo message {i} came back different");
            }
        }
    }

    /// <summary>Writes of 4 KiB to 64 KiB (larger ones the driver splits into several device
    /// commands) at random offsets, each read back and compared. Each slot owns one stripe of the
    /// disk, so a read always checks its own slot's write.</summary>
    private async Task BlockDeviceAsync()
    {
        const int MaxTransfer = 64 * 1024;
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").ConfigureAwait(false);
        var geometryBytes = new byte[DiskGeometry.EncodedSize];
        Expect(await recorder.TimeAsync(disk.DeviceName, () => disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, geometryBytes)).ConfigureAwait(false),
            new IoResult(NtStatus.Success, DiskGeometry.EncodedSize), "VBlock geometry");
        var stripe = DiskGeometry.Read(geometryBytes).LengthBytes / InFlight;
        await ForEachAsync(requests / 2, async (i, slot) =>
        {
            var random = new Random(HashCode.Combine(seed, i, "vblock"));
            var length = 4096 * random.Next(1, (MaxTransfer / 4096) + 1);
            var offset = (slot * stripe) + (4096L * random.Next((int)((stripe - length) / 4096)));
            var data = new byte[length];
            random.NextBytes(data);
            Expect(await recorder.TimeAsync(disk.DeviceName, () => disk.WriteAsync(data, offset)).ConfigureAwait(false),
                new IoResult(NtStatus.Success, length), $"VBlock write of {length} bytes at {offset}");
            var back = new byte[length];
            Expect(await recorder.TimeAsync(disk.DeviceName, () => disk.ReadAsync(back, offset)).ConfigureAwait(false),
                new IoResult(NtStatus.Success, length), $"VBlock read of {length} bytes at {offset}");
            if (back.AsSpan().SequenceEqual(data))
            {
                Interlocked.Increment(ref _verifiedTransfers);
            }
            else
            {
                Problem($"VBlock: {length} bytes at {offset} read back different data");
            }
        }).ConfigureAwait(false);
    }

    /// <summary>Frames of 60 to 1514 bytes from Nic0 to Nic1 and back the other way at the same
    /// time; each receive is posted before its frame is sent.</summary>
    private async Task NicsAsync()
    {
        await using var nic0 = await kernel.OpenAsync(@"\??\Nic0").ConfigureAwait(false);
        await using var nic1 = await kernel.OpenAsync(@"\??\Nic1").ConfigureAwait(false);
        await Task.WhenAll(DirectionAsync(nic0, nic1, 0), DirectionAsync(nic1, nic0, 1)).ConfigureAwait(false);

        async Task DirectionAsync(DeviceHandle from, DeviceHandle to, int direction)
        {
            for (var i = 0; i < requests / 4; i++)
            {
                var random = new Random(HashCode.Combine(seed, i, direction));
                var frame = new byte[random.Next(60, 1515)];
                random.NextBytes(frame);
                var buffer = new byte[2048];
                var receive = recorder.TimeAsync(to.DeviceName, () => to.ReadAsync(buffer));
                Expect(await recorder.TimeAsync(from.DeviceName, () => from.WriteAsync(frame)).ConfigureAwait(false),
                    new IoResult(NtStatus.Success, frame.Length), $"frame {i} sent on {from.DeviceName}");
                var received = await receive.ConfigureAwait(false);
                Expect(received, new IoResult(NtStatus.Success, frame.Length), $"frame {i} received on {to.DeviceName}");
                if (buffer.AsSpan(0, (int)Math.Min(received.Information, buffer.Length)).SequenceEqual(frame))
                {
                    Interlocked.Increment(ref _verifiedFrames);
                }
                else
                {
                    Problem($"frame {i} from {from.DeviceName} arrived different");
                }
            }
        }
    }

    /// <summary>Runs <paramref name="count"/> iterations, <see cref="InFlight"/> at a time; the
    /// slot number gives each concurrent lane its own buffers.</summary>
    private static Task ForEachAsync(int count, Func<int, int, Task> body) =>
        Task.WhenAll(Enumerable.Range(0, InFlight).Select(async slot =>
        {
            for (var i = slot; i < count; i += InFlight)
            {
                await body(i, slot).ConfigureAwait(false);
            }
        }));

    private void Expect(IoResult actual, IoResult expected, string what)
    {
        if (actual != expected)
        {
            Problem($"{what}: expected {expected}, got {actual}");
        }
    }

    private void Problem(string text)
    {
        lock (_problems)
        {
            _problems.Add(text);
        }
    }
}
