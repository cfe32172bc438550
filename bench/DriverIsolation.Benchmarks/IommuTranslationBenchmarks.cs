using BenchmarkDotNet.Attributes;
using DriverIsolation.Benchmarks.Infrastructure;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Benchmarks;

/// <summary>
/// One DMA address translation by the IOMMU (strict mode, default IOTLB of 64 entries), on a
/// domain with 128 pages mapped in simulated physical memory. The baseline is an IOTLB hit:
/// the device touches 32 pages over and over, all cached. A miss touches the 128 pages in turn,
/// so the least recently used page is always the one evicted and every access walks the
/// four-level I/O page table in kernel memory and refills the IOTLB. With the IOMMU off the
/// device address is the physical address (no lookup, no protection): the floor.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class IommuTranslationBenchmarks
{
    private const int Translations = 64;
    private const int HotPages = 32;
    private const int MappedPages = 128;
    private const ulong Window = 0x1000_0000;
    private static readonly RequesterId Disk = new(0, 1, 0);
    private PhysicalMemory? _memory;
    private Iommu? _iommu;
    private Iommu? _off;
    private int _cursor;

    [GlobalSetup]
    public void Setup()
    {
        _memory = new PhysicalMemory(4 << 20, 256 << 10);
        var kernel = new KernelMemory(_memory);
        _iommu = new Iommu(_memory, kernel, IommuMode.Strict);
        _off = new Iommu(_memory, kernel, IommuMode.Off);
        var domain = _iommu.CreateDomain("Disk");
        _iommu.AddWindow(domain, Window, MappedPages * Iommu.PageSize);
        _iommu.Attach(Disk, domain);
        var physical = (_memory.DmaFrames.TryAllocate(MappedPages) ?? throw new InvalidOperationException("no DMA frames")) << PhysicalMemory.FrameShift;
        if (!_iommu.TryMap(domain, Window, physical, MappedPages, DmaAccess.ReadWrite, out var error))
        {
            throw new InvalidOperationException(error);
        }

        // Prove the two access patterns are what they claim before measuring them.
        Hit();
        var misses = _iommu.IotlbMisses;
        Hit();
        Check(_iommu.IotlbMisses == misses, "the hot pages missed the IOTLB");
        Miss();
        var hits = _iommu.IotlbHits;
        Miss();
        Miss();
        Check(_iommu.IotlbHits == hits, "the cycling pages hit the IOTLB");
        Check(_iommu.FaultCount == 0 && _off.FaultCount == 0, "a translation faulted");
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _iommu?.Dispose();
        _off?.Dispose();
        _memory?.Dispose();
        (_iommu, _off, _memory) = (null, null, null);
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Translations, Description = "IOTLB hit (strict)")]
    public long Hit()
    {
        long sum = 0;
        for (var i = 0; i < Translations; i++)
        {
            sum += Translate(_iommu!, (ulong)(i % HotPages));
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Translations, Description = "IOTLB miss (strict, page-table walk)")]
    public long Miss()
    {
        long sum = 0;
        for (var i = 0; i < Translations; i++)
        {
            sum += Translate(_iommu!, (ulong)_cursor);
            _cursor = (_cursor + 1) % MappedPages;
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Translations, Description = "IOMMU off (passthrough)")]
    public long Off()
    {
        long sum = 0;
        for (var i = 0; i < Translations; i++)
        {
            sum += Translate(_off!, (ulong)(i % HotPages));
        }

        return sum;
    }

    private static long Translate(Iommu iommu, ulong page)
    {
        var address = iommu.Mode == IommuMode.Off ? (page + 64) * Iommu.PageSize : Window + (page * Iommu.PageSize) + 0x10;
        return iommu.TryTranslate(Disk, address, DmaAccess.Read, out var physical) ? physical : throw new InvalidOperationException($"0x{address:x} did not translate");
    }

    private static void Check(bool condition, string failure)
    {
        if (!condition)
        {
            throw new InvalidOperationException(failure);
        }
    }
}
