namespace DriverIsolation.Kernel;

public enum DriverState
{
    Loading,
    Running,

    /// <summary>Its host died; the watchdog is bringing it back.</summary>
    Restarting,

    /// <summary>Too many failures: disabled, its devices fail fast with DeviceQuarantined.</summary>
    Quarantined,

    /// <summary>Down for good (failed to load, or restarting is off).</summary>
    Failed,
    Stopped,
}

/// <summary>The kernel's record of one driver: its manifest, where it runs now, its state, and
/// the requests parked while it restarts. <see cref="Gate"/> guards state changes and parking,
/// so that no IRP is parked after the queue was released.</summary>
internal sealed class KernelDriver(int id, DriverManifest manifest, IsolationModel isolation, IHostChannel host)
{
    private volatile IHostChannel _host = host;
    private volatile string? _failure;
    private volatile int _state = (int)DriverState.Loading;
    private TaskCompletionSource<string> _instanceFailed = NewFailure();

    private int _inFlight;

    public int Id { get; } = id;

    /// <summary>Requests sent to the top of this driver's stacks and not finished yet.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Takes a slot for a new request; false (and nothing taken) at the limit.</summary>
    public bool TryAdmit(int limit)
    {
        if (Interlocked.Increment(ref _inFlight) <= limit)
        {
            return true;
        }

        Interlocked.Decrement(ref _inFlight);
        return false;
    }

    public void Release() => Interlocked.Decrement(ref _inFlight);

    public DriverManifest Manifest { get; } = manifest;

    public string Name => Manifest.Name;

    /// <summary>Where it runs now: a driver escalated out of a shared host runs in its own process.</summary>
    public IsolationModel Isolation { get; set; } = isolation;

    public IHostChannel Host => _host;

    public DriverState State => (DriverState)_state;

    public bool IsRunning => _state == (int)DriverState.Running;

    public string? Failure => _failure;

    public List<KernelDevice> Devices { get; } = [];

    public Lock Gate { get; } = new();

    /// <summary>IRPs waiting for the restarted instance (retry policy). Guarded by <see cref="Gate"/>.</summary>
    public Queue<KernelIrp> Parked { get; } = new();

    public int Restarts { get; set; }

    /// <summary>Loaded behind a dormant fault shim, so faults can be armed while it runs.</summary>
    public bool Injectable { get; init; }

    /// <summary>Adds a fault to the plan (<c>drviso inject</c>): the running instance arms it, and
    /// an instance started before it fired loads with it. Returns the spec with its index.</summary>
    public Protocol.FaultSpec AddFault(string fault, IReadOnlyDictionary<string, string> parameters)
    {
        lock (_faults)
        {
            var index = _faults.Count == 0 ? 1000 : Math.Max(1000, _faults.Max(f => f.Index) + 1);
            var spec = new Protocol.FaultSpec(index, fault, "requests", 0, false, (Id * 7919) + index, new Dictionary<string, string>(parameters));
            _faults.Add(spec);
            return Aim is null ? spec : Aim(spec);
        }
    }

    private readonly List<Protocol.FaultSpec> _faults = [.. manifest.Faults];

    /// <summary>The fault plan a new instance is loaded with: faults that fire once (per run)
    /// drop out once they fired; load faults (a corrupt content update on disk) and repeating
    /// ones stay.</summary>
    public Protocol.FaultSpec[] FaultsForLoad()
    {
        lock (_faults)
        {
            return Aim is null ? [.. _faults] : [.. _faults.Select(Aim)];
        }
    }

    /// <summary>Fills in the address an aimed fault (a wild write, a wild DMA) goes to, from the
    /// machine's layout at load time.</summary>
    public Func<Protocol.FaultSpec, Protocol.FaultSpec>? Aim { get; set; }

    /// <summary>The shim reported a fault it injected; true if the index is in the plan.</summary>
    public bool FaultFired(int index)
    {
        lock (_faults)
        {
            var spec = _faults.Find(f => f.Index == index);
            if (spec is null)
            {
                return false;
            }

            if (spec.Trigger != "load" && !spec.Repeat)
            {
                _faults.Remove(spec);
            }

            return true;
        }
    }

    /// <summary>When the running instance went down (for recovery times).</summary>
    public long DownTimestamp { get; set; }

    /// <summary>Why this driver must be quarantined rather than restarted (an IOMMU fault under
    /// the quarantine policy); cleared when it is re-enabled.</summary>
    public string? QuarantineDemand { get; set; }

    public Task<string> InstanceFailed
    {
        get { lock (Gate) { return _instanceFailed.Task; } }
    }

    public void AttachHost(IHostChannel host) => _host = host;

    /// <summary>A new instance is starting: failures are reported against it from now on.</summary>
    public void BeginInstance()
    {
        lock (Gate)
        {
            _instanceFailed = NewFailure();
        }
    }

    public void SignalInstanceFailed(string reason)
    {
        lock (Gate)
        {
            _instanceFailed.TrySetResult(reason);
        }
    }

    public void SetState(DriverState state, string? reason = null)
    {
        if (reason is not null)
        {
            _failure = reason;
        }

        _state = (int)state;
    }

    public void SetRunning() => SetState(DriverState.Running);

    public void SetStopped() => SetState(DriverState.Stopped);

    public void SetFailed(string reason) => SetState(DriverState.Failed, reason);

    private static TaskCompletionSource<string> NewFailure() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
