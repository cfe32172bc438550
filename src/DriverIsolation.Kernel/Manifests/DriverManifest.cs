namespace DriverIsolation.Kernel;

/// <summary>
/// What the kernel needs to load a driver (a <c>driver.json</c>): its assembly, the devices it
/// drives or the devices it filters, where it runs, and its limits. See docs/manifests.md.
/// </summary>
public sealed record DriverManifest
{
    public required string Name { get; init; }

    /// <summary>The driver assembly; a relative path is looked up beside the manifest, then in
    /// the application's directory.</summary>
    public required string Assembly { get; init; }

    /// <summary>The driver type; null means the one public type implementing IDriver.</summary>
    public string? Type { get; init; }

    public IsolationModel Isolation { get; init; } = IsolationModel.Process;

    /// <summary>How requests reach the driver's host: the named pipe, or rings in shared memory
    /// (the pipe kept for wake-ups). Null: <see cref="KernelOptions.Transport"/>. A shared host
    /// uses the ring when any of its drivers asks for it.</summary>
    public Transport? Transport { get; init; }

    /// <summary>Shared-host isolation only: drivers with the same group share one host.</summary>
    public string HostGroup { get; init; } = "shared";

    public IReadOnlyDictionary<string, string> Parameters { get; init; } = new Dictionary<string, string>();

    /// <summary>Devices this function driver creates (empty for a filter).</summary>
    public IReadOnlyList<DeviceManifest> Devices { get; init; } = [];

    /// <summary>Devices this filter driver attaches above (empty for a function driver).</summary>
    public IReadOnlyList<string> AttachTo { get; init; } = [];

    public DriverLimits Limits { get; init; } = new();

    public RecoveryPolicy Recovery { get; init; } = new();

    /// <summary>Where the manifest came from (a path, or "embedded:..."), for error messages and
    /// resolving a relative assembly path.</summary>
    public string Source { get; init; } = "(code)";

    public bool IsFilter => AttachTo.Count > 0;

    /// <summary>Faults the fault shim injects into this driver (set by a campaign's scenario, not
    /// read from driver.json).</summary>
    public IReadOnlyList<Protocol.FaultSpec> Faults { get; init; } = [];
}

/// <summary>The transport between the kernel and a driver host.</summary>
public enum Transport
{
    /// <summary>Frames on the named pipe.</summary>
    Pipe,

    /// <summary>Frames on two shared-memory rings; the pipe only wakes a sleeping reader.</summary>
    Ring,
}

public sealed record DeviceManifest
{
    /// <summary>The device's name in the namespace, e.g. <c>\Device\RamDisk0</c>.</summary>
    public required string Name { get; init; }

    public DeviceType Type { get; init; } = DeviceType.Unknown;

    /// <summary>Symbolic links to the device, e.g. <c>\??\RamDisk0</c>.</summary>
    public IReadOnlyList<string> Links { get; init; } = [];

    public IReadOnlyDictionary<string, string> Parameters { get; init; } = new Dictionary<string, string>();

    /// <summary>The simulated hardware this device drives; null for a software device.</summary>
    public HardwareManifest? Hardware { get; init; }
}

/// <summary>Simulated hardware behind a device: what kind, how big, and the DMA window its
/// driver gets (the IOMMU confines the device to it).</summary>
public sealed record HardwareManifest
{
    /// <summary>"block" (a disk with submission and completion queues) or "nic" (tx/rx rings).</summary>
    public required string Kind { get; init; }

    /// <summary>Block devices: the media size. Default 16 MiB.</summary>
    public int CapacityBytes { get; init; } = 16 << 20;

    /// <summary>Bytes of DMA memory the driver may use for this device. Default 512 KiB.</summary>
    public int DmaWindowBytes { get; init; } = 512 << 10;

    /// <summary>NICs: the device wired back to back with this one.</summary>
    public string? Peer { get; init; }
}

/// <summary>What the kernel does to a driver whose device an IOMMU fault is blamed on.</summary>
public enum IommuFaultPolicy
{
    /// <summary>Kill its host; the watchdog restarts it with fresh DMA windows.</summary>
    Restart,

    /// <summary>Kill its host and quarantine it.</summary>
    Quarantine,
}

public sealed record DriverLimits
{
    /// <summary>Deadline of every IRP to this driver's devices; past it the IRP completes with
    /// IoTimeout. Null: the kernel's default. Protects callers from a driver that never answers.</summary>
    public TimeSpan? RequestTimeout { get; init; }

    /// <summary>Working set a host of this driver may reach; past it, the watchdog kills the host.
    /// Null: no limit. Protects the machine from a driver that leaks.</summary>
    public long? MemoryBytes { get; init; }

    /// <summary>Open handles (file descriptors) the host may hold; above it the watchdog kills
    /// the host. None: <see cref="KernelOptions.MaxHandlesPerHost"/> applies alone.</summary>
    public int? Handles { get; init; }

    /// <summary>Major functions whose IRPs must not outlive their deadline: one that does means
    /// the driver is hung, and the watchdog kills its host (a hang becomes a crash, with one
    /// recovery path for both).</summary>
    public IReadOnlyList<MajorFunction> Critical { get; init; } = [];
}

/// <summary>What happens to in-flight requests when a driver's host dies.</summary>
public enum InFlightPolicy
{
    /// <summary>Complete them with DriverProcessTerminated (as UMDF does).</summary>
    Fail,

    /// <summary>Hold the idempotent ones and re-issue them to the restarted driver.</summary>
    Retry,
}

/// <summary>How the watchdog brings a driver back (DESIGN.md, "Watchdog and recovery").</summary>
public sealed record RecoveryPolicy
{
    /// <summary>Restart the driver when its host dies. Default true.</summary>
    public bool Restart { get; init; } = true;

    public InFlightPolicy InFlight { get; init; } = InFlightPolicy.Fail;

    /// <summary>Requests that may be re-issued after a restart under <see cref="InFlightPolicy.Retry"/>.</summary>
    public IReadOnlyList<MajorFunction> Idempotent { get; init; } = [MajorFunction.Read, MajorFunction.Write, MajorFunction.FlushBuffers];

    /// <summary>More failures than this within <see cref="FailureWindow"/> quarantine the driver.
    /// Default 5, as UMDF's restart limit.</summary>
    public int MaxFailures { get; init; } = 5;

    public TimeSpan FailureWindow { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>An instance that lived this long was healthy: the next failure restarts at once
    /// again instead of backing off further.</summary>
    public TimeSpan QuietPeriod { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The first restart is immediate; later ones wait about base·2^n (with jitter), at
    /// most <see cref="BackoffMax"/>.</summary>
    public TimeSpan BackoffBase { get; init; } = TimeSpan.FromMilliseconds(10);

    public TimeSpan BackoffMax { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The system cannot run properly without this driver: if it is quarantined at boot,
    /// the kernel comes up in safe mode (without it) and says so.</summary>
    public bool BootCritical { get; init; }

    /// <summary>What an IOMMU fault blamed on the driver does. Default: restart.</summary>
    public IommuFaultPolicy OnIommuFault { get; init; } = IommuFaultPolicy.Restart;
}
