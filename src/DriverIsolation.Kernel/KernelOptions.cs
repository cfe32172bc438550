using DriverIsolation.Protocol;

namespace DriverIsolation.Kernel;

public sealed class KernelOptions
{
    /// <summary>Deadline of an IRP when its driver's manifest sets none. Default 30 s. Protects
    /// callers from drivers that never complete; an IRP past it completes with IoTimeout.</summary>
    public TimeSpan DefaultRequestTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How long a new host may take to connect and say Hello. Default 30 s (a .NET host
    /// needs ~50 ms on an idle machine, far more on a loaded one).</summary>
    public TimeSpan HostStartTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Where every host runs its drivers' routines: on the thread pool (default: a thread
    /// hop per request), or inline on the thread that reads the pipe (a routine that holds it past
    /// <see cref="InlineStall"/> gets it to itself and a new thread reads on). Inline is
    /// experimental: see docs/performance.md.</summary>
    public DriverHost.HostDispatch HostDispatch { get; set; } = DriverHost.HostDispatch.Pool;

    /// <summary>True: a caller's continuation (the code after <c>await handle.ReadAsync(...)</c>)
    /// runs on the kernel thread that read its driver's completion from the host, not on the
    /// thread pool: one thread hop less per request (with the ring transport and inline host
    /// dispatch, the whole round trip runs on two spinning threads). That thread reads nothing
    /// from the host while the continuation runs; one that holds it past <see cref="InlineStall"/>
    /// gets it to itself and a new thread reads on (the watch looks twice per stall time, so after
    /// one to one and a half of it), and a blocking caller delays that host's other completions by
    /// that long. Applies to devices whose top driver runs in a host process. Off by default: see
    /// docs/performance.md.</summary>
    public bool InlineCompletions { get; set; }

    /// <summary>True (the default): every warm host loads, ahead of time, the drivers that may
    /// restart in it (PrepareDriver: each assembly in its own load context, its driver type's
    /// methods compiled, none of its code run), so a restart skips the loading. It costs each warm
    /// host 3-10 ms of CPU per driver when it starts (docs/recovery.md).</summary>
    public bool PrepareWarmHosts { get; set; } = true;

    /// <summary>With inline dispatch: how long one driver routine may keep its host's pipe unread;
    /// with <see cref="InlineCompletions"/>: how long one caller's continuation may keep the
    /// kernel's reader of a host. Default 20 ms.</summary>
    public TimeSpan InlineStall { get; set; } = DriverIsolation.DriverHost.HostServer.DefaultInlineStall;

    /// <summary>The transport of a driver whose manifest names none. Default the named pipe.</summary>
    public Transport Transport { get; set; } = Transport.Pipe;

    /// <summary>Bytes of each of a host's two shared-memory rings (ring transport): a power of
    /// two, at least twice <see cref="MaxFrameSize"/>. Default 4 MiB.</summary>
    public long RingCapacityBytes { get; set; } = 4 << 20;

    /// <summary>How long a reader of an empty ring spins before it sleeps (on the ring's futex on
    /// Linux; ring transport; both sides). Default 100 µs: longer buys latency with a whole CPU.</summary>
    public TimeSpan RingSpin { get; set; } = TimeSpan.FromMicroseconds(100);

    /// <summary>Where the ring files are created (deleted again once both sides mapped them).
    /// Default /dev/shm where it exists, else the temporary directory.</summary>
    public string? RingDirectory { get; set; }

    /// <summary>Hard limit on a frame from a host. Default 1 MiB + 4 KiB. Protects the kernel from
    /// a host that announces a huge frame to make it allocate.</summary>
    public int MaxFrameSize { get; set; } = ProtocolConstants.DefaultMaxFrameSize;

    /// <summary>Largest buffer a request may carry (it must fit in a frame with room to spare).</summary>
    public int MaxTransferSize { get; set; } = 1 << 20;

    /// <summary>The drvhost executable (drvhost.dll). Null: beside the kernel's assemblies, or
    /// the DRVISO_DRVHOST environment variable.</summary>
    public string? HostPath { get; set; }

    /// <summary>Heartbeat period of each host process: a host with two pings unanswered is hung
    /// and killed. Default 1 s. Null turns heartbeats off (tests that drive a fake clock far
    /// ahead would otherwise make every host look hung).</summary>
    public TimeSpan? HeartbeatPeriod { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Log lines a host may send per second (burst as many). Default 1000. Protects the
    /// kernel's log and CPU from a driver that floods it; past it the host is killed.</summary>
    public int MaxLogLinesPerSecond { get; set; } = 1000;

    /// <summary>Refused messages (forged, duplicate or late completions, bad pass-downs) a host
    /// may cause per second (burst as many). Default 100. A few are bugs; a flood is an attack,
    /// and past it the host is killed.</summary>
    public int MaxRefusalsPerSecond { get; set; } = 100;

    /// <summary>Requests a driver may hold at once (those sent to the top of its device stacks and
    /// not yet finished). Default 4096. Every request holds a copy of its buffers in the kernel; a
    /// driver that never completes would otherwise let its callers grow the kernel without bound.
    /// A request past the limit fails at once with <c>InsufficientResources</c>.</summary>
    public int MaxIrpsInFlightPerDriver { get; set; } = 4096;

    /// <summary>DMA memory one driver's devices may hold together (the sum of their manifests'
    /// windows). Default 16 MiB. Windows are carved out of physical memory for as long as the
    /// driver runs; without a bound, one manifest could claim the memory every other device needs.
    /// A device past it is not added (a <c>DriverLoadFailed</c> event says why).</summary>
    public int MaxDmaBytesPerDriver { get; set; } = 16 << 20;

    /// <summary>Open handles (file descriptors, as the operating system counts them) a host may
    /// hold, whatever its manifest says. Default 4096 (an idle drvhost holds a few dozen). A driver
    /// that leaks handles would otherwise exhaust the system's, which every process shares; past
    /// it the watchdog kills the host.</summary>
    public int MaxHandlesPerHost { get; set; } = 4096;

    /// <summary>Idle hosts kept started, so a restart does not wait for a process start.
    /// Default 1; 0 turns the pool off. Each idle host costs a process (some tens of MiB).</summary>
    public int WarmPoolSize { get; set; } = 1;

    /// <summary>Load every driver behind a dormant fault shim, so that faults can be injected by
    /// hand while it runs (<see cref="Microkernel.InjectFault"/>, <c>drviso inject</c>; on in
    /// <c>drviso serve</c>). Costs a call per request; off by default.</summary>
    public bool FaultInjection { get; set; }

    /// <summary>How many finished IRP ids are remembered to tell a late or duplicate completion
    /// from one for an IRP that never existed. Default 4096.</summary>
    public int FinishedIrpMemory { get; set; } = 4096;

    /// <summary>Size of simulated physical memory (a shared-memory file), created when a driver
    /// declares hardware. Default 64 MiB.</summary>
    public int PhysicalMemoryBytes { get; set; } = 64 << 20;

    /// <summary>The kernel's region at the bottom of physical memory: kernel structures with
    /// canaries and the I/O page tables. Default 1 MiB.</summary>
    public int KernelRegionBytes { get; set; } = 1 << 20;

    /// <summary>The IOMMU: off (a device can DMA anywhere), strict or lazy. Default strict.</summary>
    public Hardware.IommuMode IommuMode { get; set; } = Hardware.IommuMode.Strict;

    /// <summary>IOTLB size, fault-log size and the lazy mode's flush batch and interval.</summary>
    public Hardware.IommuOptions Iommu { get; set; } = new();

    /// <summary>How often the kernel checks its memory's canaries and page-table checksums (a
    /// damaged kernel region is a system crash). Default 100 ms; null: only on demand.</summary>
    public TimeSpan? IntegrityCheckPeriod { get; set; } = TimeSpan.FromMilliseconds(100);
}
