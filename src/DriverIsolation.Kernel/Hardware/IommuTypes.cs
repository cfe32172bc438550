using System.Globalization;

namespace DriverIsolation.Kernel.Hardware;

/// <summary>How the IOMMU stands between devices and memory.</summary>
public enum IommuMode
{
    /// <summary>Passthrough: a device address is a physical address; anything is reachable,
    /// kernel memory included.</summary>
    Off,

    /// <summary>Every DMA is translated and checked; an unmap invalidates the IOTLB at once.</summary>
    Strict,

    /// <summary>Like strict, but IOTLB invalidations after unmaps are queued and flushed in
    /// batches: cheaper, and a device can still reach a just-unmapped page until the flush.</summary>
    Lazy,
}

/// <summary>A PCI requester ID (bus:device.function): who a DMA comes from.</summary>
public readonly record struct RequesterId(byte Bus, byte Device, byte Function)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Bus:x2}:{Device:x2}.{Function:x1}");
}

/// <summary>Why the IOMMU blocked a DMA (the fault reasons of a VT-d fault record, simplified).</summary>
public enum IommuFaultReason
{
    /// <summary>No domain is attached to the requester (no context entry).</summary>
    NoDomain,

    /// <summary>The address is at or beyond 2^48.</summary>
    BeyondAddressWidth,

    /// <summary>The address is outside every DMA window granted to the domain.</summary>
    OutsideWindow,

    /// <summary>The I/O page tables have no mapping for the page.</summary>
    NotPresent,

    /// <summary>The page is mapped without read permission.</summary>
    ReadDenied,

    /// <summary>The page is mapped without write permission.</summary>
    WriteDenied,
}

/// <summary>One fault record: who, where, which access, why, and which domain (driver) it blames.</summary>
public sealed record IommuFault(long Sequence, RequesterId Requester, ulong Address, DmaAccess Access, IommuFaultReason Reason, string? Domain, DateTimeOffset At)
{
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"#{Sequence} {Requester} {Access} 0x{Address:x}: {Reason}{(Domain is null ? "" : $" (domain {Domain})")}");
}

public sealed class IommuOptions
{
    /// <summary>Cached translations. Default 64 (real IOTLBs hold tens to hundreds).</summary>
    public int IotlbCapacity { get; set; } = 64;

    /// <summary>Fault records kept; past it the log sets its overflow flag. Default 256.</summary>
    public int FaultLogCapacity { get; set; } = 256;

    /// <summary>Lazy mode: queued invalidations that force a flush. Default 32.</summary>
    public int LazyFlushBatch { get; set; } = 32;

    /// <summary>Lazy mode: the longest an invalidation waits in the queue. Default 10 ms.</summary>
    public TimeSpan LazyFlushInterval { get; set; } = TimeSpan.FromMilliseconds(10);
}
