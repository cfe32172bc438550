namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// A piece of simulated hardware in the kernel process. It is programmed through register writes,
/// touches memory only through the <see cref="DmaEngine"/> (so only where the IOMMU lets its
/// requester ID), and signals its driver with interrupts. Its own state (a disk's media) lives
/// here, so it outlives any driver instance.
/// </summary>
public abstract class DeviceModel(string name, RequesterId requester, DmaEngine dma)
{
    private Action<int>? _interrupt;

    public string Name => name;

    public RequesterId Requester => requester;

    protected DmaEngine Dma => dma;

    /// <summary>"block" or "nic".</summary>
    public abstract string Kind { get; }

    /// <summary>What the driver learns about the device when it is bound.</summary>
    public abstract IReadOnlyDictionary<string, string> Properties { get; }

    /// <summary>DMAs the IOMMU refused this device (it then reports an error or stops).</summary>
    public long DmaErrors => Interlocked.Read(ref _dmaErrors);

    private long _dmaErrors;

    /// <summary>The interrupt line: the kernel routes it to the bound driver (null: not connected).</summary>
    public void ConnectInterrupt(Action<int>? line) => Volatile.Write(ref _interrupt, line);

    /// <summary>A register write from the driver.</summary>
    public abstract void WriteRegister(int registerIndex, ulong value);

    /// <summary>Back to power-on state (queues disabled, addresses forgotten); the media stays.
    /// Done when the driver goes away, before its IOMMU domain is torn down.</summary>
    public abstract void Reset();

    /// <summary>The device address of the ring the device takes its work from (a NIC's receive
    /// ring, a block device's submission queue) as its driver programmed it; null before that.
    /// What a stray DMA from another device hurts most.</summary>
    public virtual ulong? WorkRing => null;

    protected void RaiseInterrupt(int vector) => Volatile.Read(ref _interrupt)?.Invoke(vector);

    protected bool Read(ulong address, Span<byte> destination) => Count(dma.TryRead(requester, address, destination));

    protected bool Write(ulong address, ReadOnlySpan<byte> source) => Count(dma.TryWrite(requester, address, source));

    /// <summary>Writes a queue entry whose byte at <paramref name="lastOffset"/> tells the driver it
    /// is new (a phase bit, a done flag): every other byte first, that one last, as a device posts
    /// its writes in order. A driver polling the entry never sees it marked new but half written.</summary>
    protected bool WritePublishingLast(ulong address, ReadOnlySpan<byte> entry, int lastOffset)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(lastOffset);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(lastOffset, entry.Length);
        if (!Write(address, entry[..lastOffset])
            || (lastOffset + 1 < entry.Length && !Write(address + (ulong)lastOffset + 1, entry[(lastOffset + 1)..])))
        {
            return false; // The marker is still the old one: the driver does not take the entry.
        }

        // The rest of the entry is in memory before its marker, whatever the DMA path does.
        Interlocked.MemoryBarrier();
        return Write(address + (ulong)lastOffset, entry.Slice(lastOffset, 1));
    }

    private bool Count(bool ok)
    {
        if (!ok)
        {
            Interlocked.Increment(ref _dmaErrors);
        }

        return ok;
    }
}
