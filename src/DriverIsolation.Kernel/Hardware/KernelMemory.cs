using System.Runtime.InteropServices;

namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// The kernel's region of physical memory: a few frames of kernel structures that carry canaries,
/// and the pool of I/O page-table frames. The kernel writes page tables only through
/// <see cref="WriteEntry"/>, which keeps a checksum of every table frame up to date; anything else
/// that changes a byte of the region (a device DMA-ing where the IOMMU let it) leaves a canary or a
/// checksum that no longer matches, and <see cref="Verify"/> reports it.
/// </summary>
public sealed class KernelMemory
{
    public const int EntriesPerTable = PhysicalMemory.FrameSize / sizeof(ulong);

    private readonly PhysicalMemory _memory;
    private readonly int _canaryFrames;
    private readonly ulong _seed;
    private readonly ulong[] _canarySums;
    private readonly Dictionary<long, ulong> _tableSums = [];
    private readonly Lock _gate = new();

    public KernelMemory(PhysicalMemory memory, int canaryFrames = 4, ulong seed = 0x6b65726e656c2121)
    {
        ArgumentNullException.ThrowIfNull(memory);
        var regionFrames = memory.KernelRegionBytes >> PhysicalMemory.FrameShift;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(canaryFrames);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(canaryFrames, regionFrames);
        _memory = memory;
        _canaryFrames = canaryFrames;
        _seed = seed;
        _canarySums = new ulong[canaryFrames];
        TableFrames = new FrameAllocator(canaryFrames, regionFrames - canaryFrames);
        for (var frame = 0; frame < canaryFrames; frame++)
        {
            var words = Words(frame);
            for (var i = 0; i < words.Length; i++)
            {
                words[i] = Canary(frame, i);
            }

            _canarySums[frame] = Sum(words);
        }
    }

    /// <summary>Frames of kernel structures guarded by canaries: [0, CanaryFrames).</summary>
    public int CanaryFrames => _canaryFrames;

    public FrameAllocator TableFrames { get; }

    public int TablesInUse
    {
        get
        {
            lock (_gate)
            {
                return _tableSums.Count;
            }
        }
    }

    /// <summary>A zeroed page-table frame from the pool; null when the pool is exhausted.</summary>
    public long? AllocateTable()
    {
        var frame = TableFrames.TryAllocate(1);
        if (frame is { } f)
        {
            var words = Words(f);
            words.Clear();
            lock (_gate)
            {
                _tableSums[f] = Sum(words);
            }
        }

        return frame;
    }

    public void FreeTable(long frame)
    {
        lock (_gate)
        {
            _tableSums.Remove(frame);
        }

        Words(frame).Clear();
        TableFrames.Free(frame, 1);
    }

    public ulong ReadEntry(long tableFrame, int index) => Words(tableFrame)[index];

    /// <summary>The kernel's only way to change a page table: the frame's checksum follows.</summary>
    public void WriteEntry(long tableFrame, int index, ulong value)
    {
        var words = Words(tableFrame);
        lock (_gate)
        {
            var old = words[index];
            words[index] = value;
            _tableSums[tableFrame] = _tableSums[tableFrame] - Mix(index, old) + Mix(index, value);
        }
    }

    /// <summary>Checks every canary and every page-table checksum.</summary>
    public KernelIntegrity Verify()
    {
        var damage = new List<string>();
        for (var frame = 0; frame < _canaryFrames; frame++)
        {
            if (Sum(Words(frame)) != _canarySums[frame])
            {
                var words = Words(frame);
                var first = 0;
                while (first < words.Length - 1 && words[first] == Canary(frame, first))
                {
                    first++;
                }

                damage.Add($"kernel structure frame {frame}: canary overwritten at 0x{((long)frame << PhysicalMemory.FrameShift) + (first * sizeof(ulong)):x}");
            }
        }

        KeyValuePair<long, ulong>[] tables;
        lock (_gate)
        {
            tables = [.. _tableSums];
        }

        foreach (var (frame, _) in tables)
        {
            // Under the lock: a table being written now must not look damaged half-way.
            bool damaged;
            lock (_gate)
            {
                damaged = _tableSums.TryGetValue(frame, out var expected) && Sum(Words(frame)) != expected;
            }

            if (damaged)
            {
                damage.Add($"I/O page table frame {frame} (0x{frame << PhysicalMemory.FrameShift:x}): contents do not match its checksum");
            }
        }

        return new KernelIntegrity(damage);
    }

    private Span<ulong> Words(long frame) => MemoryMarshal.Cast<byte, ulong>(_memory.Frame(frame));

    private ulong Canary(int frame, int index) => Mix(index, _seed ^ ((ulong)frame * 0x9e3779b97f4a7c15));

    private static ulong Sum(ReadOnlySpan<ulong> words)
    {
        ulong sum = 0;
        for (var i = 0; i < words.Length; i++)
        {
            sum += Mix(i, words[i]);
        }

        return sum;
    }

    // A position-dependent mix (splitmix64's finalizer), so the sum sees moved words as well as changed ones.
    private static ulong Mix(int index, ulong value)
    {
        var z = value + ((ulong)(index + 1) * 0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
        z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
        return z ^ (z >> 31);
    }
}

/// <summary>The result of a kernel memory check: intact, or what was found damaged.</summary>
public sealed record KernelIntegrity(IReadOnlyList<string> Damage)
{
    public bool Intact => Damage.Count == 0;
}
