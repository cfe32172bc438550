namespace DriverIsolation.Kernel;

public enum KernelEventKind
{
    HostStarted,
    HostExited,

    /// <summary>A fault shim injected a fault into a driver (campaigns): the moment detection
    /// and recovery are timed from.</summary>
    FaultInjected,
    DriverLoaded,
    DriverLoadFailed,
    DeviceAdded,

    /// <summary>The kernel refused a completion or pass-down that breaks the rules: a second
    /// completion, one for an IRP the sender does not own or never got, a bad length.</summary>
    CompletionRefused,

    /// <summary>A driver completed an IRP that the kernel had already completed for it (deadline,
    /// host loss): refused, harmless.</summary>
    LateCompletion,
    IrpTimedOut,
    ProtocolViolation,

    /// <summary>The kernel went down: an in-kernel driver faulted.</summary>
    BugCheck,

    /// <summary>The watchdog scheduled a restart (with its delay).</summary>
    RestartScheduled,

    /// <summary>A new instance of a driver serves again (with the recovery time).</summary>
    DriverRestarted,

    /// <summary>A driver failed too often and is disabled.</summary>
    DriverQuarantined,

    /// <summary>A quarantined driver was enabled again by hand.</summary>
    DriverReenabled,

    /// <summary>A boot-critical driver was quarantined at boot: the system runs without it.</summary>
    SafeMode,

    /// <summary>The watchdog killed a host: missed heartbeats, over its memory budget, or a
    /// critical request past its deadline.</summary>
    WatchdogKill,

    /// <summary>The IOMMU blocked a DMA; the driver is the domain's.</summary>
    IommuFault,

    /// <summary>The kernel's memory failed its canary or checksum check: a system crash.</summary>
    KernelMemoryCorrupted,

    /// <summary>A connection to a host's pipe after its handshake (another process, or a replayed
    /// token) was refused.</summary>
    ConnectionRefused,
}

/// <summary>Something the kernel observed, with its cause. Tests wait on these instead of sleeping;
/// reports and traces are built from them.</summary>
public sealed record KernelEvent(DateTimeOffset Time, KernelEventKind Kind, string? Driver, long? IrpId, string Detail)
{
    public override string ToString() =>
        $"{Time:HH:mm:ss.fff} {Kind}{(Driver is null ? "" : $" [{Driver}]")}{(IrpId is null ? "" : $" irp {IrpId}")}: {Detail}";
}
