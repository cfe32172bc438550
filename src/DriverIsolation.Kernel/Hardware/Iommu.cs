namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// The virtual IOMMU. Each driver gets a domain: a 4-level I/O page table (48-bit device
/// addresses, 4 KiB pages, 9 bits per level) whose frames live in the kernel region of
/// physical memory, plus the DMA windows the driver was granted. Devices are attached to their
/// driver's domain by requester ID; every DMA a device makes is translated here (an IOTLB of
/// bounded size in front of the page-table walk), and a DMA that is not allowed is blocked and
/// recorded as a fault blamed on the domain. With the mode <see cref="IommuMode.Off"/> nothing is
/// translated or checked: a device address is a physical address.
/// </summary>
public sealed class Iommu : IDisposable
{
    public const int AddressWidth = 48;
    public const ulong PageSize = PhysicalMemory.FrameSize;

    // Page-table entry bits. Non-leaf entries carry all three; the address is bits 12..51.
    private const ulong Present = 1;
    private const ulong ReadBit = 2;
    private const ulong WriteBit = 4;
    private const ulong AddressMask = 0x000F_FFFF_FFFF_F000;

    private readonly PhysicalMemory _memory;
    private readonly KernelMemory _kernel;
    private readonly IommuOptions _options;
    private readonly TimeProvider _time;
    private readonly Lock _gate = new();
    private readonly Dictionary<RequesterId, IommuDomain> _context = [];
    private readonly Dictionary<(int Domain, ulong Page), LinkedListNode<IotlbEntry>> _iotlb = [];
    private readonly LinkedList<IotlbEntry> _lru = new();
    private readonly List<(IommuDomain Domain, ulong Page)> _pending = [];
    private readonly List<IommuFault> _faults = [];
    private readonly ITimer? _lazyTimer;
    private int _nextDomain;
    private long _faultSequence;
    private long _hits;
    private long _misses;
    private long _flushes;

    public Iommu(PhysicalMemory memory, KernelMemory kernel, IommuMode mode, IommuOptions? options = null, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(kernel);
        _memory = memory;
        _kernel = kernel;
        _options = options ?? new IommuOptions();
        _time = time ?? TimeProvider.System;
        Mode = mode;
        if (mode == IommuMode.Lazy)
        {
            _lazyTimer = _time.CreateTimer(_ => Flush(), null, _options.LazyFlushInterval, _options.LazyFlushInterval);
        }
    }

    public IommuMode Mode { get; }

    /// <summary>Raised for every blocked DMA (also when the log is full), outside the IOMMU's lock.</summary>
    public event Action<IommuFault>? Faulted;

    public long IotlbHits => Interlocked.Read(ref _hits);

    public long IotlbMisses => Interlocked.Read(ref _misses);

    /// <summary>Lazy-mode flushes of the invalidation queue that had something to flush.</summary>
    public long LazyFlushes => Interlocked.Read(ref _flushes);

    /// <summary>Every fault so far, including those the full log could not keep.</summary>
    public long FaultCount => Interlocked.Read(ref _faultSequence);

    public int IotlbEntries
    {
        get
        {
            lock (_gate)
            {
                return _iotlb.Count;
            }
        }
    }

    public int PendingInvalidations
    {
        get
        {
            lock (_gate)
            {
                return _pending.Count;
            }
        }
    }

    /// <summary>Set when a fault arrived while the log was full (VT-d's primary fault overflow).</summary>
    public bool FaultOverflow { get; private set; }

    public IReadOnlyList<IommuFault> Faults
    {
        get
        {
            lock (_gate)
            {
                return [.. _faults];
            }
        }
    }

    /// <summary>Empties the fault log and clears the overflow flag (software reading the records).</summary>
    public IReadOnlyList<IommuFault> DrainFaults()
    {
        lock (_gate)
        {
            var drained = _faults.ToArray();
            _faults.Clear();
            FaultOverflow = false;
            return drained;
        }
    }

    public IommuDomain CreateDomain(string name)
    {
        lock (_gate)
        {
            var root = _kernel.AllocateTable() ?? throw new InvalidOperationException("the I/O page-table pool is exhausted");
            return new IommuDomain(++_nextDomain, name, root);
        }
    }

    /// <summary>Grants the domain a window of device addresses [address, address + length).</summary>
    public void AddWindow(IommuDomain domain, ulong address, ulong length)
    {
        ArgumentNullException.ThrowIfNull(domain);
        if (address % PageSize != 0 || length == 0 || length % PageSize != 0 || address + length > 1UL << AddressWidth)
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"a DMA window is page-aligned and inside the {AddressWidth}-bit address space (0x{address:x} + 0x{length:x})");
        }

        lock (_gate)
        {
            domain.Windows.Add(new DmaWindow(address, length));
        }
    }

    public void Attach(RequesterId requester, IommuDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(domain.Destroyed, domain);
            _context[requester] = domain;
        }
    }

    public IommuDomain? DomainOf(RequesterId requester)
    {
        lock (_gate)
        {
            return _context.GetValueOrDefault(requester);
        }
    }

    /// <summary>Maps <paramref name="pages"/> pages at a device address to physical frames. The
    /// range must lie in one of the domain's windows; with the IOMMU off nothing is translated, so
    /// nothing is written.</summary>
    public bool TryMap(IommuDomain domain, ulong address, long physical, int pages, DmaAccess access, out string? error)
    {
        ArgumentNullException.ThrowIfNull(domain);
        error = CheckRange(domain, address, pages);
        if (error is null && (physical % (long)PageSize != 0 || !_memory.Contains(physical, pages * (int)PageSize)))
        {
            error = $"physical 0x{physical:x} (+{pages} pages) is not page-aligned memory";
        }

        if (error is null && access is not (DmaAccess.Read or DmaAccess.Write or DmaAccess.ReadWrite))
        {
            error = $"a mapping needs read, write or both; got access {(int)access}";
        }

        if (error is not null || Mode == IommuMode.Off)
        {
            return error is null;
        }

        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(domain.Destroyed, domain);
            for (var i = 0; i < pages; i++)
            {
                var page = address + ((ulong)i * PageSize);
                var leafTable = Walk(domain.Root, page, allocate: true);
                if (leafTable is not { } table)
                {
                    error = "the I/O page-table pool is exhausted";
                    return false;
                }

                var index = Index(page, 0);
                if ((_kernel.ReadEntry(table, index) & Present) == 0)
                {
                    domain.MappedPages++;
                }

                var bits = Present | ((access & DmaAccess.Read) != 0 ? ReadBit : 0) | ((access & DmaAccess.Write) != 0 ? WriteBit : 0);
                _kernel.WriteEntry(table, index, ((ulong)physical + ((ulong)i * PageSize)) | bits);
                RemoveCached(domain.Id, page);
            }
        }

        return true;
    }

    /// <summary>Removes the mappings of <paramref name="pages"/> pages. Strict: the IOTLB forgets
    /// them now. Lazy: the invalidation is queued, and a cached translation keeps working until
    /// the queue is flushed.</summary>
    public bool TryUnmap(IommuDomain domain, ulong address, int pages, out string? error)
    {
        ArgumentNullException.ThrowIfNull(domain);
        error = CheckRange(domain, address, pages);
        if (error is not null || Mode == IommuMode.Off)
        {
            return error is null;
        }

        var flush = false;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(domain.Destroyed, domain);
            for (var i = 0; i < pages; i++)
            {
                var page = address + ((ulong)i * PageSize);
                if (Walk(domain.Root, page, allocate: false) is not { } table)
                {
                    continue;
                }

                var index = Index(page, 0);
                if ((_kernel.ReadEntry(table, index) & Present) == 0)
                {
                    continue;
                }

                _kernel.WriteEntry(table, index, 0);
                domain.MappedPages--;
                if (Mode == IommuMode.Strict)
                {
                    RemoveCached(domain.Id, page);
                }
                else
                {
                    _pending.Add((domain, page));
                }
            }

            flush = _pending.Count >= _options.LazyFlushBatch;
        }

        if (flush)
        {
            Flush();
        }

        return true;
    }

    /// <summary>Lazy mode: carries out the queued invalidations (a domain-wide IOTLB flush for
    /// every domain with one queued, as Linux's flush queue does).</summary>
    public void Flush()
    {
        lock (_gate)
        {
            if (_pending.Count == 0)
            {
                return;
            }

            foreach (var id in _pending.Select(p => p.Domain.Id).Distinct().ToList())
            {
                InvalidateDomainLocked(id);
            }

            _pending.Clear();
            _flushes++;
        }
    }

    public void InvalidateAll()
    {
        lock (_gate)
        {
            _iotlb.Clear();
            _lru.Clear();
        }
    }

    public void InvalidateDomain(IommuDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        lock (_gate)
        {
            InvalidateDomainLocked(domain.Id);
        }
    }

    public void InvalidatePage(IommuDomain domain, ulong address)
    {
        ArgumentNullException.ThrowIfNull(domain);
        lock (_gate)
        {
            RemoveCached(domain.Id, address & ~(PageSize - 1));
        }
    }

    /// <summary>Tears a domain down: its devices are detached, every mapping revoked, its page
    /// tables returned to the pool and its IOTLB entries invalidated at once, whatever the mode.
    /// A DMA from a device that was in it faults from now on.</summary>
    public void DestroyDomain(IommuDomain domain)
    {
        ArgumentNullException.ThrowIfNull(domain);
        lock (_gate)
        {
            if (domain.Destroyed)
            {
                return;
            }

            domain.Destroyed = true;
            foreach (var requester in _context.Where(c => c.Value == domain).Select(c => c.Key).ToList())
            {
                _context.Remove(requester);
            }

            FreeTables(domain.Root, 3);
            domain.MappedPages = 0;
            _pending.RemoveAll(p => p.Domain == domain);
            InvalidateDomainLocked(domain.Id);
        }
    }

    /// <summary>Translates one access by a device. False when it is blocked: the fault is
    /// recorded and raised. The access must not cross a page boundary.</summary>
    public bool TryTranslate(RequesterId requester, ulong address, DmaAccess access, out long physical)
    {
        physical = -1;
        IommuFault? fault;
        lock (_gate)
        {
            fault = TranslateLocked(requester, address, access, ref physical);
            if (fault is not null)
            {
                if (_faults.Count < _options.FaultLogCapacity)
                {
                    _faults.Add(fault);
                }
                else
                {
                    FaultOverflow = true;
                }
            }
        }

        if (fault is null)
        {
            return true;
        }

        Faulted?.Invoke(fault);
        return false;
    }

    public void Dispose() => _lazyTimer?.Dispose();

    private IommuFault? TranslateLocked(RequesterId requester, ulong address, DmaAccess access, ref long physical)
    {
        _context.TryGetValue(requester, out var domain);
        if (Mode == IommuMode.Off)
        {
            if (address < (ulong)_memory.Size)
            {
                physical = (long)address;
                return null;
            }

            return NewFault(requester, address, access, IommuFaultReason.NotPresent, domain);
        }

        if (domain is null)
        {
            return NewFault(requester, address, access, IommuFaultReason.NoDomain, null);
        }

        if (address >= 1UL << AddressWidth)
        {
            return NewFault(requester, address, access, IommuFaultReason.BeyondAddressWidth, domain);
        }

        if (!domain.InWindow(address, 1))
        {
            return NewFault(requester, address, access, IommuFaultReason.OutsideWindow, domain);
        }

        var page = address & ~(PageSize - 1);
        ulong entry;
        if (_iotlb.TryGetValue((domain.Id, page), out var cached))
        {
            Interlocked.Increment(ref _hits);
            _lru.Remove(cached);
            _lru.AddFirst(cached);
            entry = cached.Value.Entry;
        }
        else
        {
            Interlocked.Increment(ref _misses);
            entry = Walk(domain.Root, page, allocate: false) is { } table ? _kernel.ReadEntry(table, Index(page, 0)) : 0;
            if ((entry & Present) == 0)
            {
                return NewFault(requester, address, access, IommuFaultReason.NotPresent, domain);
            }

            Cache(domain.Id, page, entry);
        }

        if ((access & DmaAccess.Read) != 0 && (entry & ReadBit) == 0)
        {
            return NewFault(requester, address, access, IommuFaultReason.ReadDenied, domain);
        }

        if ((access & DmaAccess.Write) != 0 && (entry & WriteBit) == 0)
        {
            return NewFault(requester, address, access, IommuFaultReason.WriteDenied, domain);
        }

        physical = (long)((entry & AddressMask) + (address & (PageSize - 1)));
        return null;
    }

    private IommuFault NewFault(RequesterId requester, ulong address, DmaAccess access, IommuFaultReason reason, IommuDomain? domain) =>
        new(Interlocked.Increment(ref _faultSequence), requester, address, access, reason, domain?.Name, _time.GetUtcNow());

    private string? CheckRange(IommuDomain domain, ulong address, int pages)
    {
        if (pages <= 0 || address % PageSize != 0)
        {
            return $"0x{address:x} (+{pages} pages) is not a page-aligned range";
        }

        lock (_gate)
        {
            return domain.InWindow(address, (ulong)pages * PageSize) ? null : $"0x{address:x} (+{pages} pages) is outside the DMA windows of {domain.Name}";
        }
    }

    // The table holding the leaf entry for the page, creating missing levels when asked.
    private long? Walk(long root, ulong page, bool allocate)
    {
        var table = root;
        for (var level = 3; level > 0; level--)
        {
            var index = Index(page, level);
            var entry = _kernel.ReadEntry(table, index);
            if ((entry & Present) == 0)
            {
                if (!allocate)
                {
                    return null;
                }

                if (_kernel.AllocateTable() is not { } next)
                {
                    return null;
                }

                entry = ((ulong)next << PhysicalMemory.FrameShift) | Present | ReadBit | WriteBit;
                _kernel.WriteEntry(table, index, entry);
            }

            table = (long)((entry & AddressMask) >> PhysicalMemory.FrameShift);
        }

        return table;
    }

    private void FreeTables(long table, int level)
    {
        if (level > 0)
        {
            for (var i = 0; i < KernelMemory.EntriesPerTable; i++)
            {
                var entry = _kernel.ReadEntry(table, i);
                if ((entry & Present) != 0)
                {
                    FreeTables((long)((entry & AddressMask) >> PhysicalMemory.FrameShift), level - 1);
                }
            }
        }

        _kernel.FreeTable(table);
    }

    private static int Index(ulong address, int level) => (int)((address >> (PhysicalMemory.FrameShift + (9 * level))) & 511);

    private void Cache(int domain, ulong page, ulong entry)
    {
        if (_iotlb.Count >= _options.IotlbCapacity && _lru.Last is { } oldest)
        {
            _lru.RemoveLast();
            _iotlb.Remove((oldest.Value.Domain, oldest.Value.Page));
        }

        _iotlb[(domain, page)] = _lru.AddFirst(new IotlbEntry(domain, page, entry));
    }

    private void RemoveCached(int domain, ulong page)
    {
        if (_iotlb.Remove((domain, page), out var node))
        {
            _lru.Remove(node);
        }
    }

    private void InvalidateDomainLocked(int domain)
    {
        for (var node = _lru.First; node is not null;)
        {
            var next = node.Next;
            if (node.Value.Domain == domain)
            {
                _lru.Remove(node);
                _iotlb.Remove((domain, node.Value.Page));
            }

            node = next;
        }
    }

    private readonly record struct IotlbEntry(int Domain, ulong Page, ulong Entry);
}

/// <summary>A range of device addresses granted to a domain.</summary>
public readonly record struct DmaWindow(ulong Address, ulong Length)
{
    public bool Contains(ulong address, ulong length) => address >= Address && length <= Length && address - Address <= Length - length;
}

/// <summary>One driver's I/O address space: its page-table root, its windows, its mapped pages.</summary>
public sealed class IommuDomain
{
    internal IommuDomain(int id, string name, long root)
    {
        Id = id;
        Name = name;
        Root = root;
    }

    public int Id { get; }

    /// <summary>The driver the domain belongs to: a fault in it is blamed on this driver.</summary>
    public string Name { get; }

    public int MappedPages { get; internal set; }

    public bool Destroyed { get; internal set; }

    internal long Root { get; }

    internal List<DmaWindow> Windows { get; } = [];

    internal bool InWindow(ulong address, ulong length)
    {
        // A loop, not a predicate: this runs on every translation and must not allocate.
        foreach (var window in Windows)
        {
            if (window.Contains(address, length))
            {
                return true;
            }
        }

        return false;
    }
}
