using System.Buffers.Binary;
using DriverIsolation.DriverHost;

namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// Simulated physical memory: one shared-memory file (under /dev/shm where there is one) in
/// 4 KiB frames. The kernel maps all of it; a driver host maps only the frames of its own DMA
/// windows. Physical addresses are offsets into the file. The first frames are the kernel's
/// region (its structures and the I/O page tables); the rest is handed out for DMA.
/// </summary>
public sealed class PhysicalMemory : IDisposable
{
    public const int FrameSize = 4096;
    public const int FrameShift = 12;

    private readonly MappedRegion _region;

    public PhysicalMemory(int sizeBytes, int kernelRegionBytes, string? path = null)
    {
        if (sizeBytes <= 0 || sizeBytes % FrameSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(sizeBytes), sizeBytes, "physical memory must be a positive multiple of 4096 bytes");
        }

        if (kernelRegionBytes <= 2 * FrameSize || kernelRegionBytes % FrameSize != 0 || kernelRegionBytes >= sizeBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(kernelRegionBytes), kernelRegionBytes, "the kernel region must be a multiple of 4096 bytes, more than two frames and smaller than physical memory");
        }

        Path = path ?? DefaultPath();
        _region = MappedRegion.Create(Path, sizeBytes);
        Size = sizeBytes;
        KernelRegionBytes = kernelRegionBytes;
        DmaFrames = new FrameAllocator(kernelRegionBytes >> FrameShift, (sizeBytes - kernelRegionBytes) >> FrameShift);
    }

    /// <summary>The shared-memory file: hosts map their windows from it.</summary>
    public string Path { get; }

    public int Size { get; }

    public int FrameCount => Size >> FrameShift;

    /// <summary>Bytes at the bottom of memory that belong to the kernel: [0, KernelRegionBytes).</summary>
    public int KernelRegionBytes { get; }

    /// <summary>Frames above the kernel region, for DMA windows.</summary>
    public FrameAllocator DmaFrames { get; }

    public bool IsKernelAddress(long physical) => physical >= 0 && physical < KernelRegionBytes;

    public bool Contains(long physical, int length) => physical >= 0 && length >= 0 && physical <= Size - (long)length;

    /// <summary>The bytes at a physical address (a CPU access: no IOMMU in the way).</summary>
    public Span<byte> Span(long physical, int length)
    {
        if (!Contains(physical, length))
        {
            throw new ArgumentOutOfRangeException(nameof(physical), physical, $"{length} bytes at 0x{physical:x} are outside physical memory (0x{Size:x} bytes)");
        }

        return _region.GetSpan().Slice((int)physical, length);
    }

    public Span<byte> Frame(long frameNumber) => Span(frameNumber << FrameShift, FrameSize);

    public ulong ReadUInt64(long physical) => BinaryPrimitives.ReadUInt64LittleEndian(Span(physical, 8));

    public void WriteUInt64(long physical, ulong value) => BinaryPrimitives.WriteUInt64LittleEndian(Span(physical, 8), value);

    public void Dispose()
    {
        ((IDisposable)_region).Dispose();
        try
        {
            File.Delete(Path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static string DefaultPath()
    {
        var directory = Directory.Exists("/dev/shm") ? "/dev/shm" : System.IO.Path.GetTempPath();
        return System.IO.Path.Combine(directory, $"drviso-phys-{Environment.ProcessId}-{Guid.NewGuid():N}");
    }
}

/// <summary>Hands out runs of contiguous frames, first fit, from [First, First + Count).</summary>
public sealed class FrameAllocator
{
    private readonly bool[] _used;
    private readonly Lock _gate = new();

    public FrameAllocator(long first, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(first);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        First = first;
        _used = new bool[count];
    }

    public long First { get; }

    public int Count => _used.Length;

    public int FreeFrames
    {
        get
        {
            lock (_gate)
            {
                return _used.Count(u => !u);
            }
        }
    }

    /// <summary>The first frame number of <paramref name="frames"/> contiguous free frames, or
    /// null when no run is long enough.</summary>
    public long? TryAllocate(int frames)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(frames);
        lock (_gate)
        {
            var run = 0;
            for (var i = 0; i < _used.Length; i++)
            {
                run = _used[i] ? 0 : run + 1;
                if (run == frames)
                {
                    var start = i - frames + 1;
                    Array.Fill(_used, true, start, frames);
                    return First + start;
                }
            }

            return null;
        }
    }

    public void Free(long firstFrame, int frames)
    {
        lock (_gate)
        {
            var start = firstFrame - First;
            if (start < 0 || start + frames > _used.Length)
            {
                throw new ArgumentOutOfRangeException(nameof(firstFrame), firstFrame, "frames outside this allocator");
            }

            for (var i = (int)start; i < start + frames; i++)
            {
                if (!_used[i])
                {
                    throw new InvalidOperationException($"frame {First + i} freed twice");
                }

                _used[i] = false;
            }
        }
    }
}
