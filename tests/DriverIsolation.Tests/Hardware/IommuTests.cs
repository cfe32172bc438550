using DriverIsolation.Kernel.Hardware;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>The IOMMU on real (shared) simulated memory: page-table walks and permissions,
/// the IOTLB and its invalidation, exact fault records, strict vs lazy unmap, and what a wild
/// DMA does to kernel memory with the IOMMU off and on.</summary>
public sealed class IommuTests : IDisposable
{
    private const ulong Window = 0x1000_0000;
    private static readonly RequesterId Disk = new(0, 1, 0);
    private static readonly RequesterId Nic = new(0, 2, 0);
    private readonly PhysicalMemory _memory = new(4 << 20, 256 << 10);
    private readonly KernelMemory _kernel;
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 25, 12, 0, 0, TimeSpan.Zero));

    public IommuTests() => _kernel = new KernelMemory(_memory);

    public void Dispose() => _memory.Dispose();

    [Fact]
    public void Map_TranslatesThroughFourLevelsOfTablesInKernelMemory()
    {
        using var iommu = New(IommuMode.Strict);
        var domain = Domain(iommu, "Disk", Disk);
        var frame = _memory.DmaFrames.TryAllocate(2)!.Value;
        var physical = frame << PhysicalMemory.FrameShift;

        Assert.True(iommu.TryMap(domain, Window + 0x3000, physical, 2, DmaAccess.ReadWrite, out var error), error);

        Assert.Equal(4, _kernel.TablesInUse); // root + 3 levels for pages that share a leaf table
        Assert.Equal(2, domain.MappedPages);
        Assert.True(iommu.TryTranslate(Disk, Window + 0x3010, DmaAccess.Read, out var first));
        Assert.Equal(physical + 0x10, first);
        Assert.True(iommu.TryTranslate(Disk, Window + 0x4ff8, DmaAccess.Write, out var second));
        Assert.Equal(physical + 0x1ff8, second);
        Assert.Empty(iommu.Faults);
        Assert.True(_kernel.Verify().Intact);
    }

    [Fact]
    public void Translate_EveryFaultReasonIsRecordedExactly()
    {
        using var iommu = New(IommuMode.Strict);
        var domain = Domain(iommu, "Disk", Disk);
        var physical = _memory.DmaFrames.TryAllocate(2)!.Value << PhysicalMemory.FrameShift;
        Assert.True(iommu.TryMap(domain, Window, physical, 1, DmaAccess.Read, out _));
        Assert.True(iommu.TryMap(domain, Window + 0x1000, physical + 0x1000, 1, DmaAccess.Write, out _));
        var raised = new List<IommuFault>();
        iommu.Faulted += raised.Add;

        Assert.False(iommu.TryTranslate(Disk, Window + 8, DmaAccess.Write, out _));
        Assert.False(iommu.TryTranslate(Disk, Window + 0x1008, DmaAccess.Read, out _));
        Assert.False(iommu.TryTranslate(Disk, Window + 0x2000, DmaAccess.Read, out _));
        Assert.False(iommu.TryTranslate(Disk, 0x40, DmaAccess.Write, out _));
        Assert.False(iommu.TryTranslate(Disk, 1UL << 48, DmaAccess.Read, out _));
        Assert.False(iommu.TryTranslate(Nic, Window, DmaAccess.Read, out _));

        var at = _time.GetUtcNow();
        Assert.Equal(
        [
            new IommuFault(1, Disk, Window + 8, DmaAccess.Write, IommuFaultReason.WriteDenied, "Disk", at),
            new IommuFault(2, Disk, Window + 0x1008, DmaAccess.Read, IommuFaultReason.ReadDenied, "Disk", at),
            new IommuFault(3, Disk, Window + 0x2000, DmaAccess.Read, IommuFaultReason.NotPresent, "Disk", at),
            new IommuFault(4, Disk, 0x40, DmaAccess.Write, IommuFaultReason.OutsideWindow, "Disk", at),
            new IommuFault(5, Disk, 1UL << 48, DmaAccess.Read, IommuFaultReason.BeyondAddressWidth, "Disk", at),
            new IommuFault(6, Nic, Window, DmaAccess.Read, IommuFaultReason.NoDomain, null, at),
        ], iommu.Faults);
        Assert.Equal(iommu.Faults, raised);
        Assert.Equal("#1 00:01.0 Write 0x10000008: WriteDenied (domain Disk)", raised[0].ToString());
    }

    [Fact]
    public void Map_OutsideTheWindowsIsRefused()
    {
        using var iommu = New(IommuMode.Strict);
        var domain = Domain(iommu, "Disk", Disk);

        Assert.False(iommu.TryMap(domain, Window + 0xFF000, 0x40000, 2, DmaAccess.Read, out var error));
        Assert.Equal("0x100ff000 (+2 pages) is outside the DMA windows of Disk", error);
        Assert.False(iommu.TryMap(domain, Window, _memory.Size, 1, DmaAccess.Read, out error));
        Assert.StartsWith("physical 0x400000", error, StringComparison.Ordinal);
        Assert.Equal(0, domain.MappedPages);
    }

    [Fact]
    public void Iotlb_CountsHitsAndMisses_EvictsTheLeastRecentlyUsed_AndInvalidates()
    {
        using var iommu = New(IommuMode.Strict, new IommuOptions { IotlbCapacity = 2 });
        var domain = Domain(iommu, "Disk", Disk);
        var physical = _memory.DmaFrames.TryAllocate(3)!.Value << PhysicalMemory.FrameShift;
        Assert.True(iommu.TryMap(domain, Window, physical, 3, DmaAccess.ReadWrite, out _));

        Translate(iommu, Window);          // miss
        Translate(iommu, Window + 0x10);   // hit
        Translate(iommu, Window + 0x1000); // miss
        Translate(iommu, Window);          // hit: page 0 is now the most recent
        Translate(iommu, Window + 0x2000); // miss, evicts page 1
        Translate(iommu, Window);          // hit
        Translate(iommu, Window + 0x1000); // miss: it was evicted
        Assert.Equal((3L, 4L), (iommu.IotlbHits, iommu.IotlbMisses));
        Assert.Equal(2, iommu.IotlbEntries);

        iommu.InvalidatePage(domain, Window + 0x1000);
        Assert.Equal(1, iommu.IotlbEntries);
        iommu.InvalidateDomain(domain);
        Assert.Equal(0, iommu.IotlbEntries);
        Translate(iommu, Window);
        iommu.InvalidateAll();
        Assert.Equal(0, iommu.IotlbEntries);
        Assert.Equal((3L, 5L), (iommu.IotlbHits, iommu.IotlbMisses));
    }

    [Fact]
    public void Unmap_StrictFaultsAtOnce()
    {
        using var iommu = New(IommuMode.Strict);
        var (domain, _) = MappedAndCached(iommu);

        Assert.True(iommu.TryUnmap(domain, Window, 1, out _));

        Assert.False(iommu.TryTranslate(Disk, Window, DmaAccess.Read, out _));
        Assert.Equal(IommuFaultReason.NotPresent, Assert.Single(iommu.Faults).Reason);
        Assert.Equal(0, iommu.PendingInvalidations);
    }

    [Fact]
    public void Unmap_LazyStaleTranslationWorksUntilTheFlush()
    {
        using var iommu = New(IommuMode.Lazy);
        var (domain, physical) = MappedAndCached(iommu);

        Assert.True(iommu.TryUnmap(domain, Window, 1, out _));

        Assert.Equal(1, iommu.PendingInvalidations);
        Assert.True(iommu.TryTranslate(Disk, Window + 4, DmaAccess.Write, out var stale));
        Assert.Equal(physical + 4, stale);
        Assert.Empty(iommu.Faults);

        _time.Advance(TimeSpan.FromMilliseconds(10));

        Assert.Equal(0, iommu.PendingInvalidations);
        Assert.Equal(1, iommu.LazyFlushes);
        Assert.False(iommu.TryTranslate(Disk, Window + 4, DmaAccess.Write, out _));
        Assert.Equal(IommuFaultReason.NotPresent, Assert.Single(iommu.Faults).Reason);
    }

    [Fact]
    public void Unmap_LazyFlushesWhenTheQueueIsFull()
    {
        using var iommu = New(IommuMode.Lazy, new IommuOptions { LazyFlushBatch = 3 });
        var domain = Domain(iommu, "Disk", Disk);
        var physical = _memory.DmaFrames.TryAllocate(3)!.Value << PhysicalMemory.FrameShift;
        Assert.True(iommu.TryMap(domain, Window, physical, 3, DmaAccess.ReadWrite, out _));

        Assert.True(iommu.TryUnmap(domain, Window, 2, out _));
        Assert.Equal((2, 0L), (iommu.PendingInvalidations, iommu.LazyFlushes));
        Assert.True(iommu.TryUnmap(domain, Window + 0x2000, 1, out _));
        Assert.Equal((0, 1L), (iommu.PendingInvalidations, iommu.LazyFlushes));
    }

    [Fact]
    public void FaultLog_WhenFull_SetsOverflowAndStillRaises()
    {
        using var iommu = New(IommuMode.Strict, new IommuOptions { FaultLogCapacity = 2 });
        Domain(iommu, "Disk", Disk);
        var raised = 0;
        iommu.Faulted += _ => raised++;

        for (var i = 0; i < 3; i++)
        {
            Assert.False(iommu.TryTranslate(Disk, Window + ((ulong)i * 0x1000), DmaAccess.Read, out _));
        }

        Assert.Equal(2, iommu.Faults.Count);
        Assert.True(iommu.FaultOverflow);
        Assert.Equal((3, 3L), (raised, iommu.FaultCount));
        Assert.Equal(2, iommu.DrainFaults().Count);
        Assert.False(iommu.FaultOverflow);
        Assert.Empty(iommu.Faults);
    }

    [Fact]
    public void DestroyDomain_RevokesEverything_ALateDmaFaults_TablesGoBackToThePool()
    {
        using var iommu = New(IommuMode.Lazy);
        var (domain, _) = MappedAndCached(iommu);
        var free = _kernel.TableFrames.FreeFrames;

        iommu.DestroyDomain(domain);

        Assert.Equal(free + 4, _kernel.TableFrames.FreeFrames);
        Assert.Equal(0, iommu.IotlbEntries);
        Assert.False(iommu.TryTranslate(Disk, Window, DmaAccess.Read, out _));
        Assert.Equal(IommuFaultReason.NoDomain, Assert.Single(iommu.Faults).Reason);
        Assert.True(_kernel.Verify().Intact);
    }

    [Fact]
    public void WildDmaIntoKernelMemory_IommuOff_LandsAndTheCanaryCatchesIt()
    {
        using var iommu = New(IommuMode.Off);
        var dma = new DmaEngine(_memory, iommu);

        Assert.True(dma.TryWrite(Disk, 0x1100, new byte[64]));

        var integrity = _kernel.Verify();
        Assert.False(integrity.Intact);
        Assert.Equal("kernel structure frame 1: canary overwritten at 0x1100", Assert.Single(integrity.Damage));
        Assert.Empty(iommu.Faults);
    }

    [Fact]
    public void WildDmaIntoAPageTable_IommuOff_TheChecksumCatchesIt()
    {
        using var strict = New(IommuMode.Strict);
        var domain = Domain(strict, "Disk", Disk);
        var physical = _memory.DmaFrames.TryAllocate(1)!.Value << PhysicalMemory.FrameShift;
        Assert.True(strict.TryMap(domain, Window, physical, 1, DmaAccess.ReadWrite, out _));
        using var off = New(IommuMode.Off);
        var tableAddress = (ulong)_kernel.CanaryFrames << PhysicalMemory.FrameShift; // the first table frame: the root

        Assert.True(new DmaEngine(_memory, off).TryWrite(Nic, tableAddress + 8, [0xff]));

        var damage = Assert.Single(_kernel.Verify().Damage);
        Assert.Equal($"I/O page table frame {_kernel.CanaryFrames} (0x{tableAddress:x}): contents do not match its checksum", damage);
    }

    [Fact]
    public void WildDmaIntoKernelMemory_IommuStrict_FaultsAndNothingLands()
    {
        using var iommu = New(IommuMode.Strict);
        var dma = new DmaEngine(_memory, iommu);
        Domain(iommu, "Disk", Disk);

        Assert.False(dma.TryWrite(Disk, 0x1100, new byte[64]));

        Assert.True(_kernel.Verify().Intact);
        var fault = Assert.Single(iommu.Faults);
        Assert.Equal((Disk, 0x1100UL, DmaAccess.Write, IommuFaultReason.OutsideWindow, "Disk"), (fault.Requester, fault.Address, fault.Access, fault.Reason, fault.Domain));
        Assert.Equal(0, dma.BytesWritten);
    }

    [Fact]
    public void Dma_CrossingPages_IsTranslatedPerPage_AndStopsAtTheFirstBlockedPage()
    {
        using var iommu = New(IommuMode.Strict);
        var dma = new DmaEngine(_memory, iommu);
        var domain = Domain(iommu, "Disk", Disk);
        var frames = _memory.DmaFrames.TryAllocate(3)!.Value;
        var physical = frames << PhysicalMemory.FrameShift;
        // Two pages mapped in reverse order: the device sees them contiguous, memory does not.
        Assert.True(iommu.TryMap(domain, Window, physical + 0x1000, 1, DmaAccess.ReadWrite, out _));
        Assert.True(iommu.TryMap(domain, Window + 0x1000, physical, 1, DmaAccess.ReadWrite, out _));
        var data = Enumerable.Range(0, 0x1800).Select(i => (byte)i).ToArray();

        Assert.True(dma.TryWrite(Disk, Window + 0x400, data));

        Assert.Equal(data[..0xC00], _memory.Span(physical + 0x1400, 0xC00).ToArray());
        Assert.Equal(data[0xC00..], _memory.Span(physical, 0xC00).ToArray());
        var back = new byte[0x1800];
        Assert.True(dma.TryRead(Disk, Window + 0x400, back));
        Assert.Equal(data, back);

        Assert.False(dma.TryWrite(Disk, Window + 0x1800, new byte[0x1000]));
        Assert.Equal(Window + 0x2000, Assert.Single(iommu.Faults).Address);
        Assert.Equal(0x1800 + 0x800, dma.BytesWritten);
    }

    private Iommu New(IommuMode mode, IommuOptions? options = null) => new(_memory, _kernel, mode, options, _time);

    private static IommuDomain Domain(Iommu iommu, string name, RequesterId requester)
    {
        var domain = iommu.CreateDomain(name);
        iommu.AddWindow(domain, Window, 1 << 20);
        iommu.Attach(requester, domain);
        return domain;
    }

    private (IommuDomain Domain, long Physical) MappedAndCached(Iommu iommu)
    {
        var domain = Domain(iommu, "Disk", Disk);
        var physical = _memory.DmaFrames.TryAllocate(1)!.Value << PhysicalMemory.FrameShift;
        Assert.True(iommu.TryMap(domain, Window, physical, 1, DmaAccess.ReadWrite, out _));
        Assert.True(iommu.TryTranslate(Disk, Window, DmaAccess.Write, out _));
        Assert.Equal(1, iommu.IotlbEntries);
        return (domain, physical);
    }

    private static void Translate(Iommu iommu, ulong address) =>
        Assert.True(iommu.TryTranslate(Disk, address, DmaAccess.Read, out _));
}
