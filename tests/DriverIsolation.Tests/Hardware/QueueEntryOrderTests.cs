using DriverIsolation.Hardware;
using DriverIsolation.Kernel.Hardware;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// A device posts a queue entry while its driver polls it from another thread (another process, in
/// isolation). The device writes the byte that marks the entry new last (<see
/// cref="DeviceModel"/>'s ordered write), and the driver reads it first (the specs' readers). Here
/// a device thread and a driver thread hand one entry back and forth, lap after lap, through real
/// simulated memory: the driver must never see an entry marked new with an old lap's fields. (With
/// the fields read before the marker, the block test saw torn entries: 3 in one run of 200,000 laps.)
/// </summary>
[Collection("processes")] // two threads that spin on two vCPUs: not beside the other tests
public sealed class QueueEntryOrderTests : IDisposable
{
    private const int Laps = 200_000;
    private static readonly RequesterId Device = new(0, 1, 0);
    private readonly PhysicalMemory _memory = new(1 << 20, 256 << 10);
    private readonly Iommu _iommu;
    private readonly PostingDevice _device;
    private readonly long _entry;

    // Set when either side fails: the other stops spinning instead of waiting for a lap that will
    // never come, and both have stopped before the memory is unmapped.
    private volatile bool _stop;

    public QueueEntryOrderTests()
    {
        _iommu = new Iommu(_memory, new KernelMemory(_memory), IommuMode.Off, time: new FakeTimeProvider());
        _device = new PostingDevice(new DmaEngine(_memory, _iommu));
        _entry = _memory.DmaFrames.TryAllocate(1)!.Value << PhysicalMemory.FrameShift;
    }

    public void Dispose()
    {
        _iommu.Dispose();
        _memory.Dispose();
    }

    [Fact]
    public async Task BlockCompletion_SeenWithANewPhaseIsAlwaysWhole()
    {
        var acknowledged = 0;
        var device = Side(() =>
        {
            Span<byte> completion = stackalloc byte[BlockDeviceSpec.CompletionSize];
            for (var lap = 1; lap <= Laps && WaitFor(ref acknowledged, lap - 1); lap++)
            {
                BlockDeviceSpec.WriteCompletion(completion, (ushort)lap, (ushort)(lap * 7), (ushort)(lap * 13), phase: (lap & 1) == 1);
                Assert.True(_device.Post((ulong)_entry, completion, BlockDeviceSpec.CompletionPhaseOffset));
            }
        });

        var torn = 0;
        var driver = Side(() =>
        {
            for (var lap = 1; lap <= Laps && !_stop; lap++)
            {
                var spinner = default(SpinWait);
                while (!_stop)
                {
                    var (id, status, head, phase) = BlockDeviceSpec.ReadCompletion(_memory.Span(_entry, BlockDeviceSpec.CompletionSize));
                    if (phase == ((lap & 1) == 1))
                    {
                        torn += id == (ushort)lap && status == (ushort)(lap * 7) && head == (ushort)(lap * 13) ? 0 : 1;
                        break;
                    }

                    spinner.SpinOnce(sleep1Threshold: -1);
                }

                Volatile.Write(ref acknowledged, lap);
            }
        });

        await Task.WhenAll(device, driver).WaitAsync(TimeSpan.FromMinutes(2));
        Assert.Equal(Laps, acknowledged);
        Assert.Equal(0, torn);
    }

    [Fact]
    public async Task NicDescriptor_SeenDoneIsAlwaysWhole()
    {
        var rearmed = 0;
        var device = Side(() =>
        {
            Span<byte> descriptor = stackalloc byte[NicSpec.DescriptorSize];
            for (var lap = 1; lap <= Laps && WaitFor(ref rearmed, lap - 1); lap++)
            {
                NicSpec.WriteDescriptor(descriptor, (ulong)lap, FrameLength(lap), NicSpec.FlagDone, NicSpec.StatusSuccess);
                Assert.True(_device.Post((ulong)_entry, descriptor, NicSpec.FlagsOffset));
            }
        });

        var torn = 0;
        var driver = Side(() =>
        {
            for (var lap = 1; lap <= Laps && !_stop; lap++)
            {
                var spinner = default(SpinWait);
                while (!_stop)
                {
                    var (address, length, flags, _) = NicSpec.ReadDescriptor(_memory.Span(_entry, NicSpec.DescriptorSize));
                    if ((flags & NicSpec.FlagDone) != 0)
                    {
                        torn += address == (ulong)lap && length == FrameLength(lap) ? 0 : 1;
                        break;
                    }

                    spinner.SpinOnce(sleep1Threshold: -1);
                }

                // The driver gives the descriptor back to the device: a buffer of full capacity, not done.
                NicSpec.WriteDescriptor(_memory.Span(_entry, NicSpec.DescriptorSize), 0, NicSpec.MaxFrameBytes);
                Volatile.Write(ref rearmed, lap);
            }
        });

        await Task.WhenAll(device, driver).WaitAsync(TimeSpan.FromMinutes(2));
        Assert.Equal(Laps, rearmed);
        Assert.Equal(0, torn);
    }

    private static ushort FrameLength(int lap) => (ushort)(60 + (lap % 1400));

    /// <summary>One side on its own thread; if it fails, the other stops.</summary>
    private Task Side(Action run) => Task.Factory.StartNew(
        () =>
        {
            try
            {
                run();
            }
            catch
            {
                _stop = true;
                throw;
            }
        },
        CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>Spins until the counter reaches the value (true) or the other side failed (false).</summary>
    private bool WaitFor(ref int counter, int value)
    {
        var spinner = default(SpinWait);
        while (Volatile.Read(ref counter) != value)
        {
            if (_stop)
            {
                return false;
            }

            spinner.SpinOnce(sleep1Threshold: -1);
        }

        return true;
    }

    /// <summary>A device that only posts entries, the way the block device and the NIC do.</summary>
    private sealed class PostingDevice(DmaEngine dma) : DeviceModel("Poster", Device, dma)
    {
        public override string Kind => "test";

        public override IReadOnlyDictionary<string, string> Properties { get; } = new Dictionary<string, string>();

        public bool Post(ulong address, ReadOnlySpan<byte> entry, int markerOffset) => WritePublishingLast(address, entry, markerOffset);

        public override void WriteRegister(int registerIndex, ulong value)
        {
        }

        public override void Reset()
        {
        }
    }
}
