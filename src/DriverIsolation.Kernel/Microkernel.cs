using DriverIsolation.Kernel.Hardware;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace DriverIsolation.Kernel;

/// <summary>
/// The simulated kernel: boots drivers from their manifests into their hosts (in-kernel, shared
/// host or their own process), builds the device namespace and stacks, and serves applications
/// through <see cref="OpenAsync"/>. A driver or host that fails never takes the kernel with it,
/// except in-kernel, where that is the point.
/// </summary>
public sealed class Microkernel : IAsyncDisposable
{
    private readonly KernelOptions _options;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly IoManager _io;
    private readonly HostLauncher _launcher;
    private readonly ObjectNamespace _namespace = new();
    private readonly List<KernelDriver> _drivers = [];
    private readonly List<IHostChannel> _hosts = [];

    // The exits of hosts already reported gone (a host the kernel killed is reported at the SIGKILL,
    // before its process has ended); shutdown waits for them, so no host outlives the kernel unreaped.
    private readonly List<Task> _dying = [];
    private readonly Lock _gate = new();
    private readonly TimeProvider _time;
    private readonly CancellationTokenSource _stopping = new();
    private readonly List<Task> _supervision = [];
    private InKernelHostChannel? _inKernel;
    private int _nextDriverId;
    private int _nextDeviceId;
    private volatile string? _safeMode;
    private volatile bool _booting;
    private readonly WarmPool _pool;
    private ITimer? _integrityTimer;

    public Microkernel(KernelOptions? options = null, ILoggerFactory? loggerFactory = null, TimeProvider? timeProvider = null)
    {
        _options = options ?? new KernelOptions();
        _loggerFactory = loggerFactory ?? NullLoggerFactory.Instance;
        _logger = _loggerFactory.CreateLogger("DriverIsolation.Kernel");

        // What kernels killed before this one left (their memory is RAM), once per process.
        if (LeftoverFiles.RemoveOnce() is (> 0 and var files, var bytes))
        {
            Log.LeftoversRemoved(_logger, files, bytes);
        }

        var time = timeProvider ?? TimeProvider.System;
        _time = time;
        Events = new KernelEventLog(time);
        _io = new IoManager(time, Events, _logger, _options) { OnCriticalTimeout = OnCriticalTimeout, OnFaultInjected = OnFaultInjected };
        Metrics = new KernelMetrics(() => _io.OutstandingCount,
            () => _io.Machine is { } machine ? (machine.Iommu.IotlbHits, machine.Iommu.IotlbMisses) : null);
        _io.Metrics = Metrics;
        Events.Raised += Metrics.EventRaised;
        _launcher = new HostLauncher(_options, _io, Events, _loggerFactory, time);
        _pool = new WarmPool(_launcher, _options.WarmPoolSize, OnHostExited, _stopping.Token, _options.PrepareWarmHosts ? DriversToPrepare : null);
    }

    /// <summary>What a warm host loads ahead of time: every driver that would restart in it (one
    /// outside the kernel, restarted by its policy, not quarantined).</summary>
    private List<PrepareDriver> DriversToPrepare()
    {
        lock (_gate)
        {
            return [.. _drivers
                .Where(d => d.Isolation != IsolationModel.InKernel && d.Manifest.Recovery.Restart && d.State != DriverState.Quarantined)
                .Select(d => new PrepareDriver(d.Name, ManifestLoader.ResolveAssemblyPath(d.Manifest), d.Manifest.Type))];
        }
    }

    /// <summary>The kernel's metrics (meter <c>DriverIsolation.Kernel</c>): IRPs completed by
    /// device, function and status, their durations, IRPs in flight, kernel events by kind and
    /// driver (restarts, quarantines, IOMMU faults, ...), the IOTLB hit ratio.</summary>
    public KernelMetrics Metrics { get; }

    /// <summary>Records IRPs and kernel events as a Chrome / Perfetto trace while set (null: no trace).</summary>
    public TraceRecorder? Trace
    {
        get => _io.Trace;
        set
        {
            if (_io.Trace is not null)
            {
                Events.Raised -= _traceEvents;
            }

            _io.Trace = value;
            if (value is not null)
            {
                _traceEvents = e => value.EventRaised(e, e.Driver is null ? null : HostPidOf(e.Driver));
                Events.Raised += _traceEvents;
            }
        }
    }

    private Action<KernelEvent> _traceEvents = _ => { };

    private int? HostPidOf(string driver)
    {
        lock (_gate)
        {
            return _drivers.FirstOrDefault(d => d.Name == driver)?.Host.ProcessId;
        }
    }

    /// <summary>What the kernel observed: hosts, loads, refusals, timeouts, crashes.</summary>
    public KernelEventLog Events { get; }

    public static int ProcessId => Environment.ProcessId;

    /// <summary>Why the kernel went down, or null while it is up.</summary>
    public string? BugCheckReason => _io.BugCheckReason;

    /// <summary>Why the system runs in safe mode (a boot-critical driver is quarantined), or null.</summary>
    public string? SafeModeReason => _safeMode;

    /// <summary>Completions delivered twice for one IRP (the invariant says 0).</summary>
    public long DuplicateDeliveries => _io.DuplicateDeliveries;

    /// <summary>IRPs in the kernel that have not completed yet.</summary>
    public int OutstandingIrps => _io.OutstandingCount;

    /// <summary>Messages the kernel has taken from driver host processes, every host together
    /// (the fuzzer counts its inputs with it).</summary>
    public long HostMessagesReceived => _io.HostMessages;

    /// <summary>
    /// Loads the drivers: function drivers first, then filters above their targets. Every
    /// manifest is checked before anything starts (a bad set throws <see cref="ManifestException"/>);
    /// a driver that then fails to load is reported in <see cref="Events"/> and the rest boot.
    /// </summary>
    /// <param name="isolationOverride">Runs every driver in this model instead of its manifest's.</param>
    public async Task StartAsync(IEnumerable<DriverManifest> manifests, IsolationModel? isolationOverride = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(manifests);
        var list = manifests.ToList();
        ManifestSet.Validate(list);
        if (_io.Machine is null && list.Any(m => m.Devices.Any(d => d.Hardware is not null)))
        {
            StartMachine();
        }

        var drivers = new List<KernelDriver>();
        var hostsToStart = new Dictionary<string, (IsolationModel Isolation, List<DriverManifest> Drivers)>(StringComparer.Ordinal);
        foreach (var manifest in list)
        {
            var isolation = isolationOverride ?? manifest.Isolation;
            if (isolation != IsolationModel.InKernel)
            {
                var hostName = isolation == IsolationModel.SharedHost ? $"shared-{manifest.HostGroup}" : manifest.Name;
                if (!hostsToStart.TryGetValue(hostName, out var entry))
                {
                    hostsToStart[hostName] = entry = (isolation, []);
                }

                entry.Drivers.Add(manifest);
            }
        }

        // Hosts start in parallel: a process start dominates boot time.
        var started = await Task.WhenAll(hostsToStart.Select(async h =>
        {
            try
            {
                return (h.Key, Channel: (IHostChannel?)await _launcher.StartAsync(h.Key, h.Value.Isolation, OnHostExited, cancellationToken).ConfigureAwait(false), Error: (string?)null);
            }
            catch (HostStartException ex)
            {
                return (h.Key, Channel: (IHostChannel?)null, Error: (string?)ex.Message);
            }
        })).ConfigureAwait(false);
        var channels = started.ToDictionary(s => s.Key, s => (s.Channel, s.Error), StringComparer.Ordinal);
        foreach (var (hostName, entry) in hostsToStart)
        {
            if (channels[hostName].Channel is ProcessHostChannel channel)
            {
                StartHeartbeat(channel, entry.Drivers.Select(d => d.Limits));
            }
        }

        lock (_gate)
        {
            _hosts.AddRange(started.Where(s => s.Channel is not null).Select(s => s.Channel!));
        }

        _booting = true;
        var supervised = new List<KernelDriver>();
        var recovering = new List<KernelDriver>();
        foreach (var manifest in list.OrderBy(m => m.IsFilter))
        {
            var isolation = isolationOverride ?? manifest.Isolation;
            IHostChannel? host;
            string? hostError = null;
            if (isolation == IsolationModel.InKernel)
            {
                host = InKernel();
            }
            else
            {
                (host, hostError) = channels[isolation == IsolationModel.SharedHost ? $"shared-{manifest.HostGroup}" : manifest.Name];
            }

            var driver = new KernelDriver(Interlocked.Increment(ref _nextDriverId), manifest, isolation, host ?? InKernel()) { Injectable = _options.FaultInjection };
            if (manifest.Faults.Count > 0 || driver.Injectable)
            {
                driver.Aim = spec => _io.Machine?.Aim(driver, spec) ?? spec;
            }

            lock (_gate)
            {
                _drivers.Add(driver);
            }

            if (host is null)
            {
                FailLoad(driver, hostError ?? "no host");
                continue;
            }

            var (status, detail) = await LoadAsync(driver, cancellationToken).ConfigureAwait(false);
            if (isolation == IsolationModel.InKernel)
            {
                continue;
            }

            if (status.IsSuccess())
            {
                supervised.Add(driver);
            }
            else if (status == NtStatus.DriverProcessTerminated && !manifest.Recovery.Restart)
            {
                FailLoad(driver, detail ?? "its host died while loading it");
            }
            else if (status == NtStatus.DriverProcessTerminated)
            {
                // Its host died while loading it (a crash in DriverEntry, say): the watchdog
                // handles it as any other crash, and boot waits to see how that ends.
                driver.SetState(DriverState.Restarting, detail);
                recovering.Add(driver);
            }
        }

        foreach (var driver in supervised)
        {
            Supervise(driver, instanceLoaded: true);
        }

        foreach (var driver in recovering)
        {
            Supervise(driver, instanceLoaded: false);
        }

        await Task.WhenAll(recovering.Select(d => Events.WaitForAsync(e => e.Driver == d.Name &&
            e.Kind is KernelEventKind.DriverRestarted or KernelEventKind.DriverQuarantined or KernelEventKind.DriverLoadFailed, cancellationToken))).ConfigureAwait(false);
        _booting = false;
        if (supervised.Count + recovering.Count > 0)
        {
            _pool.Fill();
        }
    }

    /// <summary>Opens a device by name or link (IRP_MJ_CREATE).</summary>
    /// <exception cref="IoException">No such device, or the driver refused the open.</exception>
    public async Task<DeviceHandle> OpenAsync(string path, CancellationToken cancellationToken = default)
    {
        var device = _namespace.Resolve(path) ?? throw new IoException(NtStatus.ObjectNameNotFound, $"cannot open {path}");
        var file = _io.NewFileObject(device, path);
        var result = await _io.SubmitAsync(file, MajorFunction.Create, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, cancellationToken).ConfigureAwait(false);
        if (!result.IsSuccess)
        {
            throw new IoException(result.Status, $"cannot open {path}");
        }

        device.OpenFiles[file.Id] = file;
        return new DeviceHandle(_io, file);
    }

    public IReadOnlyList<DriverInfo> GetDrivers()
    {
        lock (_gate)
        {
            return [.. _drivers.Select(d => new DriverInfo(d.Name, d.Isolation, d.Host.Name, d.Host.ProcessId, d.State, d.Failure, d.Restarts,
                d.Host is ProcessHostChannel { UsesRing: true } ? Transport.Ring : Transport.Pipe))];
        }
    }

    public IReadOnlyList<DeviceInfo> GetDevices() => [.. _namespace.Devices().Select(Describe)];

    /// <summary>The device a name or link leads to; null if none.</summary>
    public DeviceInfo? GetDevice(string path) => _namespace.Resolve(path) is { } device ? Describe(device) : null;

    /// <summary>How many times a caller's continuation held the kernel's reader of a driver's host
    /// past the stall time (<see cref="KernelOptions.InlineCompletions"/>); 0 for a driver that is
    /// not in a host process.</summary>
    internal long ReaderHandoffs(string driverName) => ChannelOf(driverName)?.ReaderHandoffs ?? 0;

    /// <summary>How many callers' continuations ran on the kernel's reader of a driver's host
    /// (<see cref="KernelOptions.InlineCompletions"/>); 0 for a driver not in a host process.</summary>
    internal long CompletedInline(string driverName) => ChannelOf(driverName)?.CompletedInline ?? 0;

    /// <summary>
    /// Has the kernel's ring reader of the host that takes a device's requests (the host of the
    /// device's top driver) poll <paramref name="companion"/> while it spins on an empty ring: a
    /// caller that would otherwise wake a thread of its own for each request (a network client's
    /// connection) lets that reader take the requests as they come, and send them on, while it waits
    /// for the host's answers anyway. Null if the device is unknown, its top driver is not in a host
    /// process, does not use the ring transport, or its reader already has a companion. A host that
    /// is restarted (or the kernel stopping) detaches it (<see cref="IRingCompanion.Detached"/>); it
    /// may attach again to the next. Disposing the attachment detaches it.
    /// </summary>
    public IDisposable? AttachRingCompanion(string deviceName, IRingCompanion companion)
    {
        ArgumentNullException.ThrowIfNull(companion);
        return _namespace.Resolve(deviceName) is { Layers: [var top, ..] } && top.Host is ProcessHostChannel channel && channel.TryAttach(companion)
            ? new RingCompanionAttachment(channel, companion)
            : null;
    }

    private sealed class RingCompanionAttachment(ProcessHostChannel channel, IRingCompanion companion) : IDisposable
    {
        public void Dispose() => channel.Detach(companion);
    }

    /// <summary>Whether a caller's continuation holds the kernel's reader of a driver's host now.</summary>
    internal bool ReaderRunningInline(string driverName) => ChannelOf(driverName)?.RunningInline ?? false;

    /// <summary>The bytes the runtime of a driver's host process has allocated since the host
    /// started, as the host reports them once it has handled everything sent to it before; null
    /// for a driver that is not in a host process, or whose host did not answer within
    /// <paramref name="timeout"/>. For measuring what requests cost a host (<c>drviso bench</c>).</summary>
    public Task<long?> HostAllocatedBytesAsync(string driverName, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        ChannelOf(driverName) is { } channel ? channel.AllocatedBytesAsync(timeout, cancellationToken) : Task.FromResult<long?>(null);

    /// <summary>Completes after the watchdog's next periodic check of the host a driver runs in
    /// (its memory and handles against the driver's budgets, its unanswered heartbeats): null if
    /// the host passed; else why it will not run on (the reason the watchdog killed it, or "the
    /// host is gone" if it exited first). Null at once for a driver
    /// that is not in a host process, or with heartbeats off. A fault campaign waits for it before
    /// it judges a trial, so that a fault whose only symptom is one the watchdog samples (a leak)
    /// is looked at at least once.</summary>
    public Task<string?> WatchdogCheckAsync(string driverName, CancellationToken cancellationToken = default) =>
        ChannelOf(driverName) is { } channel ? channel.NextWatchdogCheckAsync().WaitAsync(cancellationToken) : Task.FromResult<string?>(null);

    private ProcessHostChannel? ChannelOf(string driverName)
    {
        lock (_gate)
        {
            return _drivers.FirstOrDefault(d => d.Name.Equals(driverName, StringComparison.OrdinalIgnoreCase))?.Host as ProcessHostChannel;
        }
    }

    /// <summary>Kills the host a driver runs in, as a crash would (kill -9). In-kernel, this is a
    /// bug check.</summary>
    public void KillDriverHost(string driverName)
    {
        KernelDriver driver;
        lock (_gate)
        {
            driver = _drivers.FirstOrDefault(d => d.Name.Equals(driverName, StringComparison.OrdinalIgnoreCase))
                ?? throw new KeyNotFoundException($"no driver named {driverName}");
        }

        driver.Host.Kill($"killed on request ({driverName})");
    }

    /// <summary>
    /// Breaks a running driver by hand, as a student (<c>drviso inject</c>) or a test does: arms
    /// one of the shim's faults (<see cref="DriverHost.FaultTypes.All"/>) in its running instance,
    /// to fire on its next request; "kill" SIGKILLs its host instead. The fault joins the driver's
    /// plan, so an instance that restarts before it fired loads with it. Needs
    /// <see cref="KernelOptions.FaultInjection"/>. Returns what was done.
    /// </summary>
    /// <param name="parameters">The fault's parameters (as in a scenario: "device" for
    /// wild-dma-other-driver, "delayMs" for slow-completion, ...).</param>
    public string InjectFault(string driverName, string fault, IReadOnlyDictionary<string, string>? parameters = null)
    {
        ArgumentNullException.ThrowIfNull(fault);
        if (fault == "kill")
        {
            KillDriverHost(driverName);
            return $"{driverName}: host killed";
        }

        if (!DriverHost.FaultTypes.All.Contains(fault))
        {
            throw new ArgumentException($"unknown fault \"{fault}\" (expected kill, {string.Join(", ", DriverHost.FaultTypes.All)})", nameof(fault));
        }

        KernelDriver driver;
        lock (_gate)
        {
            driver = _drivers.FirstOrDefault(d => d.Name.Equals(driverName, StringComparison.OrdinalIgnoreCase))
                ?? throw new KeyNotFoundException($"no driver named {driverName}");
        }

        if (!driver.Injectable)
        {
            throw new InvalidOperationException($"{driver.Name} was loaded without the fault shim (start the kernel with fault injection on: drviso serve does)");
        }

        if (!driver.IsRunning)
        {
            throw new InvalidOperationException($"{driver.Name} is {driver.State}, not running");
        }

        var hasBlock = GetIommu()?.Devices.Any(d => d.Kind == "block" && d.BoundTo == driver.Name) == true;
        if (DriverHost.FaultTypes.Dma.Contains(fault) && !hasBlock)
        {
            throw new InvalidOperationException($"{fault} programs block hardware, and {driver.Name} drives none");
        }

        var spec = driver.AddFault(fault, parameters ?? new Dictionary<string, string>());
        if (DriverHost.FaultTypes.Aimed.Contains(fault) && !spec.Parameters.ContainsKey("address"))
        {
            driver.FaultFired(spec.Index);
            throw new InvalidOperationException($"{fault} has nothing to aim at here{(fault == "wild-dma-other-driver" ? " (no other driver has a DMA window; name one with device=...)" : "")}");
        }

        try
        {
            driver.Host.ArmFault(driver, spec);
        }
        catch (InvalidOperationException)
        {
            // Not armed: it leaves the plan too, or a restart would load it after all.
            driver.FaultFired(spec.Index);
            throw;
        }

        return $"{fault} armed in {driver.Name} ({driver.Isolation.ToManifestName()}): it fires on the driver's next request";
    }

    /// <summary>Stops every host (Shutdown, then kill after a grace period) and unloads in-kernel drivers.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        Task[] supervision;
        lock (_gate)
        {
            supervision = [.. _supervision];
        }

        await Task.WhenAll(supervision).ConfigureAwait(false);
        IHostChannel[] hosts;
        Task[] dying;
        lock (_gate)
        {
            hosts = [.. _hosts];
            _hosts.Clear();
            dying = [.. _dying];
            foreach (var driver in _drivers)
            {
                driver.SetStopped();
            }
        }

        await Task.WhenAll(hosts.Select(h => h.DisposeAsync().AsTask()).Append(_pool.DisposeAsync()).Concat(dying)).ConfigureAwait(false);
        if (_inKernel is not null)
        {
            await _inKernel.DisposeAsync().ConfigureAwait(false);
        }

        if (_integrityTimer is not null)
        {
            await _integrityTimer.DisposeAsync().ConfigureAwait(false);
        }

        _io.Dispose();
        _io.Machine?.Dispose();
        Metrics.Dispose();
        _stopping.Dispose();
    }

    /// <summary>The IOMMU's mode, counters and fault records; null when no driver declares hardware.</summary>
    public IommuInfo? GetIommu()
    {
        if (_io.Machine is not { } machine)
        {
            return null;
        }

        var iommu = machine.Iommu;
        return new IommuInfo(iommu.Mode, iommu.FaultCount, iommu.Faults, iommu.FaultOverflow, iommu.IotlbHits, iommu.IotlbMisses,
            [.. machine.Devices.Select(d => new HardwareDeviceInfo(d.Name, d.Kind, d.Requester.ToString(), machine.Iommu.DomainOf(d.Requester)?.Name, d.DmaErrors))]);
    }

    /// <summary>Checks the kernel region's canaries and page-table checksums now. Damage is a
    /// system crash: the kernel bug-checks and stops serving I/O.</summary>
    public KernelIntegrity VerifyKernelMemory()
    {
        if (_io.Machine is not { } machine)
        {
            return new KernelIntegrity([]);
        }

        var integrity = machine.KernelMemory.Verify();
        if (!integrity.Intact && _io.BugCheckReason is null)
        {
            Log.KernelMemoryCorrupted(_logger, integrity.Damage[0]);
            Events.Add(KernelEventKind.KernelMemoryCorrupted, null, null, string.Join("; ", integrity.Damage));
            _io.BugCheck($"kernel memory corrupted: {integrity.Damage[0]}");
        }

        return integrity;
    }

    internal Machine? Machine => _io.Machine;

    /// <summary>The I/O manager, for tests that play a host from inside the kernel process.</summary>
    internal IoManager Io => _io;

    private void StartMachine()
    {
        var machine = new Machine(_options, _time);
        machine.Iommu.Faulted += OnIommuFault;
        _io.Machine = machine;
        if (_options.IntegrityCheckPeriod is { } period)
        {
            _integrityTimer = _time.CreateTimer(_ => VerifyKernelMemory(), null, period, period);
        }
    }

    private HardwareBinding? Bind(KernelDriver driver, DeviceLayer layer, KernelDevice device, HardwareManifest? hardware, IHostChannel host) =>
        hardware is null || _io.Machine is not { } machine ? null : machine.Bind(driver, layer.DeviceId, device.Name, hardware, host);

    /// <summary>The IOMMU blocked a DMA: the driver bound to the device is to blame, and its
    /// manifest says what happens to it (in-kernel, there is nothing to kill: it is recorded).</summary>
    private void OnIommuFault(IommuFault fault)
    {
        KernelDriver? driver;
        lock (_gate)
        {
            driver = fault.Domain is null ? null : _drivers.FirstOrDefault(d => d.Name == fault.Domain);
        }

        Log.IommuFault(_logger, fault.ToString());
        Events.Add(KernelEventKind.IommuFault, fault.Domain, null, fault.ToString());
        if (driver is null || driver.Isolation == IsolationModel.InKernel || !driver.IsRunning)
        {
            return;
        }

        var reason = $"IOMMU fault: {fault}";
        if (driver.Manifest.Recovery.OnIommuFault == IommuFaultPolicy.Quarantine)
        {
            driver.QuarantineDemand ??= reason;
        }

        OnWatchdogKill(driver.Host, reason);
        driver.Host.Kill($"watchdog: {reason}");
    }

    private async Task<(NtStatus Status, string? Detail)> LoadAsync(KernelDriver driver, CancellationToken cancellationToken)
    {
        var (status, detail) = await driver.Host.LoadDriverAsync(driver, ManifestLoader.ResolveAssemblyPath(driver.Manifest), cancellationToken).ConfigureAwait(false);
        if (!status.IsSuccess())
        {
            if (status != NtStatus.DriverProcessTerminated || driver.Isolation == IsolationModel.InKernel)
            {
                FailLoad(driver, detail ?? status.ToString());
            }

            return (status, detail);
        }

        lock (driver.Gate)
        {
            // Unless its host died since it answered: the state the exit set (and the failure
            // it signalled, which the supervisor takes up) stands.
            if (driver.State == DriverState.Loading)
            {
                driver.SetRunning();
            }
        }

        Log.DriverLoaded(_logger, driver.Name, driver.Isolation.ToManifestName(), driver.Host.Name);
        Events.Add(KernelEventKind.DriverLoaded, driver.Name, null, $"{driver.Isolation.ToManifestName()} in {driver.Host.Name} (PID {driver.Host.ProcessId})");
        await CreateDevicesAsync(driver, cancellationToken).ConfigureAwait(false);
        return (status, detail);
    }

    /// <summary>Creates the driver's devices (or, for a filter, its layers above its targets) and
    /// puts them in the namespace. Runs once per driver, on its first successful load.</summary>
    private async Task CreateDevicesAsync(KernelDriver driver, CancellationToken cancellationToken)
    {
        var manifest = driver.Manifest;
        foreach (var deviceManifest in manifest.Devices)
        {
            var device = new KernelDevice(deviceManifest.Name, deviceManifest.Type, manifest.Limits.RequestTimeout ?? _options.DefaultRequestTimeout);
            var layer = new DeviceLayer(Interlocked.Increment(ref _nextDeviceId), driver);
            device.AddBottom(layer);
            if (await AddDeviceAsync(driver, layer, device, hasLowerDevice: false, deviceManifest.Parameters, cancellationToken, deviceManifest.Hardware).ConfigureAwait(false))
            {
                _namespace.AddDevice(device);
                foreach (var link in deviceManifest.Links)
                {
                    _namespace.AddLink(link, device.Name);
                }

                driver.Devices.Add(device);
            }
        }

        foreach (var target in manifest.AttachTo)
        {
            var device = _namespace.Resolve(target);
            if (device is null)
            {
                Events.Add(KernelEventKind.DriverLoadFailed, driver.Name, null, $"cannot attach to {target}: no such device (did its driver fail to load?)");
                continue;
            }

            var layer = new DeviceLayer(Interlocked.Increment(ref _nextDeviceId), driver);
            if (await AddDeviceAsync(driver, layer, device, hasLowerDevice: true, manifest.Parameters, cancellationToken).ConfigureAwait(false))
            {
                device.AddTop(layer);
                driver.Devices.Add(device);
            }
        }
    }

    private async Task<bool> AddDeviceAsync(KernelDriver driver, DeviceLayer layer, KernelDevice device, bool hasLowerDevice,
        IReadOnlyDictionary<string, string> parameters, CancellationToken cancellationToken, HardwareManifest? hardware = null)
    {
        HardwareBinding? binding;
        try
        {
            binding = Bind(driver, layer, device, hardware, driver.Host);
        }
        catch (InsufficientMemoryException ex)
        {
            Events.Add(KernelEventKind.DriverLoadFailed, driver.Name, null, $"no hardware for {device.Name}: {ex.Message}");
            return false;
        }

        var (status, detail) = await driver.Host.AddDeviceAsync(driver, layer, device, hasLowerDevice, parameters, binding, cancellationToken).ConfigureAwait(false);
        if (!status.IsSuccess())
        {
            Events.Add(KernelEventKind.DriverLoadFailed, driver.Name, null, $"AddDevice for {device.Name} failed: {detail ?? status.ToString()}");
            return false;
        }

        Log.DeviceAdded(_logger, device.Name, driver.Name);
        Events.Add(KernelEventKind.DeviceAdded, driver.Name, null, hasLowerDevice ? $"filter above {device.Name}" : device.Name);
        return true;
    }

    private void FailLoad(KernelDriver driver, string reason)
    {
        driver.SetFailed(reason);
        Log.DriverLoadFailed(_logger, driver.Name, reason);
        Events.Add(KernelEventKind.DriverLoadFailed, driver.Name, null, reason);
    }

    private void OnHostExited(ProcessHostChannel host, string reason)
    {
        bool stopping;
        List<KernelDriver> hosted;
        lock (_gate)
        {
            hosted = [.. _drivers.Where(d => d.Host == host)];
            stopping = _stopping.IsCancellationRequested || (hosted.Count > 0 && hosted.All(d => d.State == DriverState.Stopped));
        }

        var now = _time.GetTimestamp();
        foreach (var driver in hosted.Where(d => d.State is DriverState.Running or DriverState.Loading))
        {
            // Restarting first, so that the sweep below parks what the retry policy keeps.
            driver.DownTimestamp = now;
            lock (driver.Gate)
            {
                driver.SetState(stopping || !driver.Manifest.Recovery.Restart ? DriverState.Failed : DriverState.Restarting, $"host exited: {reason}");
            }
        }

        // The dead instance's DMA rights go first: a device it programmed can no longer reach memory.
        foreach (var driver in hosted)
        {
            _io.Machine?.Unbind(driver);
        }

        var (completed, parked) = _io.OnHostExited(host);
        if (stopping)
        {
            Log.HostStopped(_logger, host.Name, host.ProcessId, reason);
        }
        else
        {
            Log.HostExited(_logger, host.Name, host.ProcessId, reason, completed);
        }

        lock (_gate)
        {
            _hosts.Remove(host);
            _dying.RemoveAll(t => t.IsCompleted);
            _dying.Add(host.Exited);
        }

        Events.Add(KernelEventKind.HostExited, host.Name, null,
            $"PID {host.ProcessId}: {reason}; {completed} IRPs completed with DriverProcessTerminated, {parked} held for a restart");
        foreach (var driver in hosted)
        {
            driver.SignalInstanceFailed($"host {host.Name} (PID {host.ProcessId}) exited: {reason}");
        }
    }

    /// <summary>Heartbeats for a host, with the strictest memory budget of the drivers in it.</summary>
    private void StartHeartbeat(ProcessHostChannel host, IEnumerable<DriverLimits> drivers)
    {
        if (_options.HeartbeatPeriod is not { } period)
        {
            return;
        }

        // A shared host answers to the strictest of its drivers' budgets.
        var limits = drivers.ToList();
        var memory = limits.Select(l => l.MemoryBytes).Where(b => b is not null).Min();
        var handles = limits.Select(l => l.Handles).Where(h => h is not null).Append(_options.MaxHandlesPerHost).Min()!.Value;
        host.StartHeartbeat(_time, period, memory, handles, OnWatchdogKill);
    }

    private void OnWatchdogKill(IHostChannel host, string reason)
    {
        Log.WatchdogKill(_logger, host.Name, reason);
        Events.Add(KernelEventKind.WatchdogKill, host.Name, null, reason);
    }

    /// <summary>A request the manifest marks critical outlived its deadline: the driver is hung.
    /// Killing its host turns the hang into a crash, which the supervisor already handles.</summary>
    private void OnCriticalTimeout(DeviceLayer layer, KernelIrp irp)
    {
        var reason = $"hung: critical {irp.MajorFunction} IRP {irp.Id} to {irp.Device.Name} passed its {irp.Device.RequestTimeout.TotalMilliseconds:F0} ms deadline";
        OnWatchdogKill(layer.Host, reason);
        layer.Host.Kill($"watchdog: {reason}");
    }

    /// <summary>A fault shim says it injects a fault now: the event campaigns time detection and
    /// recovery from.</summary>
    private void OnFaultInjected(int driverId, int index, string fault, string detail)
    {
        KernelDriver? driver;
        lock (_gate)
        {
            driver = _drivers.FirstOrDefault(d => d.Id == driverId);
        }

        if (driver is not null && driver.FaultFired(index))
        {
            Events.Add(KernelEventKind.FaultInjected, driver.Name, null, detail);
        }
    }

    /// <summary>Puts a driver under a supervisor. <paramref name="instanceLoaded"/>: its instance
    /// was loaded (and may have died since, before the supervisor could watch it); otherwise the
    /// supervisor starts one.</summary>
    private void Supervise(KernelDriver driver, bool instanceLoaded)
    {
        var supervisor = new DriverSupervisor(new KernelDriverLifecycle(this, driver), driver.Manifest.Recovery, _time);
        supervisor.RestartScheduled += s =>
        {
            Log.RestartScheduled(_logger, driver.Name, s.Delay, s.Attempt, s.RecentFailures);
            Events.Add(KernelEventKind.RestartScheduled, driver.Name, null, $"in {s.Delay.TotalMilliseconds:F0} ms (attempt {s.Attempt}, {s.RecentFailures} recent failures)");
        };
        lock (_gate)
        {
            _supervision.Add(supervisor.RunAsync(instanceLoaded, _stopping.Token));
        }
    }

    /// <summary>
    /// Brings a driver back in a fresh host of its own (a driver from a shared host is moved to
    /// its own process, as UMDF does): load it, re-create its device objects with the same ids,
    /// replay the Create of every open handle on its layer, then release the requests parked for
    /// it. Throws <see cref="DriverStartException"/> if any step fails.
    /// </summary>
    internal async Task RestartDriverAsync(KernelDriver driver, CancellationToken cancellationToken)
    {
        try
        {
            await RestartInFreshHostAsync(driver, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _pool.Fill();
        }
    }

    private async Task RestartInFreshHostAsync(KernelDriver driver, CancellationToken cancellationToken)
    {
        // The new instance begins once the old host's exit has been processed: its failure
        // signalled (so that it cannot land on the new instance) and its DMA rights revoked (so
        // that the revocation cannot take the new instance's). A driver whose host died while it
        // was loading at boot can be handed to its supervisor before that is done.
        if (driver.Host is ProcessHostChannel previous && !previous.IsAlive)
        {
            await previous.ExitReported.WaitAsync(cancellationToken).ConfigureAwait(false);
        }

        lock (driver.Gate)
        {
            driver.SetState(DriverState.Restarting);
        }

        driver.BeginInstance();
        var host = _pool.TryTake(driver.Name);
        if (host is null)
        {
            try
            {
                host = await _launcher.StartAsync(driver.Name, IsolationModel.Process, OnHostExited, cancellationToken).ConfigureAwait(false);
            }
            catch (HostStartException ex)
            {
                throw new DriverStartException(ex.Message);
            }
        }

        lock (_gate)
        {
            _hosts.Add(host);
        }

        StartHeartbeat(host, [driver.Manifest.Limits]);
        var escalated = driver.Isolation == IsolationModel.SharedHost;
        driver.AttachHost(host);
        driver.Isolation = IsolationModel.Process;
        var (status, detail) = await host.LoadDriverAsync(driver, ManifestLoader.ResolveAssemblyPath(driver.Manifest), cancellationToken).ConfigureAwait(false);
        var prepared = status.IsSuccess() && detail == DriverLoadedAhead;
        if (!status.IsSuccess())
        {
            throw await AbandonAsync(host, "driver failed to load on restart", $"load failed: {detail ?? status.ToString()}").ConfigureAwait(false);
        }

        var handles = 0;
        if (driver.Devices.Count == 0)
        {
            await CreateDevicesAsync(driver, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            foreach (var device in driver.Devices)
            {
                var index = device.IndexOf(driver);
                var layer = device.Layers[index];
                var deviceManifest = driver.Manifest.IsFilter ? null : driver.Manifest.Devices.First(d => d.Name.Equals(device.Name, StringComparison.OrdinalIgnoreCase));
                var parameters = deviceManifest?.Parameters ?? driver.Manifest.Parameters;
                HardwareBinding? binding;
                try
                {
                    binding = Bind(driver, layer, device, deviceManifest?.Hardware, host);
                }
                catch (InsufficientMemoryException ex)
                {
                    throw await AbandonAsync(host, "no DMA window on restart", ex.Message).ConfigureAwait(false);
                }

                var added = await host.AddDeviceAsync(driver, layer, device, index < device.Layers.Length - 1, parameters, binding, cancellationToken).ConfigureAwait(false);
                if (!added.Status.IsSuccess())
                {
                    throw await AbandonAsync(host, "AddDevice failed on restart", $"AddDevice for {device.Name} failed: {added.Detail ?? added.Status.ToString()}").ConfigureAwait(false);
                }

                foreach (var file in device.OpenFiles.Values)
                {
                    var replayed = await _io.ReplayCreateAsync(file, index).ConfigureAwait(false);
                    if (replayed.Status == NtStatus.DriverProcessTerminated)
                    {
                        throw await AbandonAsync(host, "died during the restart", $"died while re-opening handle {file.Id}").ConfigureAwait(false);
                    }

                    handles++;
                }
            }
        }

        KernelIrp[] parked = [];
        var died = false;
        lock (driver.Gate)
        {
            if (host.IsAlive)
            {
                driver.SetRunning();
                driver.Restarts++;
                parked = [.. driver.Parked];
                driver.Parked.Clear();
            }
            else
            {
                died = true;
            }
        }

        if (died)
        {
            throw await AbandonAsync(host, "died during the restart", "the new host died during the restart").ConfigureAwait(false);
        }

        var recovery = _time.GetElapsedTime(driver.DownTimestamp);
        Log.DriverRestarted(_logger, driver.Name, host.Name, host.ProcessId, recovery.TotalMilliseconds, parked.Length, handles);
        Events.Add(KernelEventKind.DriverRestarted, driver.Name, null,
            $"PID {host.ProcessId}{(escalated ? ", moved out of its shared host" : "")}{(prepared ? ", loaded ahead in a warm host" : "")}; recovery {recovery.TotalMilliseconds:F1} ms; {parked.Length} parked IRPs re-issued; {handles} handles re-opened");
        _io.ReleaseParked(parked);
    }

    /// <summary>A restart gives up on its new host: the host is killed (if it still runs), and the
    /// restart waits until its exit has been reported. The report is made on another thread;
    /// arriving after the next restart began, it would take the next instance for this one
    /// (fail it, unbind its DMA windows).</summary>
    private static async Task<DriverStartException> AbandonAsync(ProcessHostChannel host, string killReason, string failure)
    {
        host.Kill(killReason);
        try
        {
            await host.ExitReported.WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // A host that cannot be killed: its report finds a driver restarting elsewhere.
        }

        return new DriverStartException(failure);
    }

    /// <summary>What a host says on loading a driver it had prepared ahead of time.</summary>
    internal const string DriverLoadedAhead = DriverHost.DriverRuntime.LoadedAhead;

    internal void QuarantineDriver(KernelDriver driver, string reason)
    {
        KernelIrp[] parked;
        lock (driver.Gate)
        {
            driver.SetState(DriverState.Quarantined, reason);
            parked = [.. driver.Parked];
            driver.Parked.Clear();
        }

        _io.FailParked(parked, NtStatus.DeviceQuarantined);

        // Safe mode is decided before the quarantine is announced: boot ends on that event, and
        // whoever asks once boot is over must already see safe mode.
        var safeMode = driver.Manifest.Recovery.BootCritical && _booting;
        if (safeMode)
        {
            _safeMode ??= $"{driver.Name} is quarantined: {reason}";
        }

        Log.DriverQuarantined(_logger, driver.Name, reason);
        Events.Add(KernelEventKind.DriverQuarantined, driver.Name, null, reason);
        if (safeMode)
        {
            Log.SafeMode(_logger, driver.Name);
            Events.Add(KernelEventKind.SafeMode, driver.Name, null, $"booted without {driver.Name}: {reason}");
        }
    }

    internal void GiveUpOnDriver(KernelDriver driver, string reason)
    {
        KernelIrp[] parked;
        lock (driver.Gate)
        {
            driver.SetFailed(reason);
            parked = [.. driver.Parked];
            driver.Parked.Clear();
        }

        _io.FailParked(parked, NtStatus.DriverProcessTerminated);
        Events.Add(KernelEventKind.DriverLoadFailed, driver.Name, null, reason);
    }

    /// <summary>PIDs of the idle hosts kept ready for restarts.</summary>
    public IReadOnlyList<int> WarmPoolProcessIds => _pool.ProcessIds;

    /// <summary>The drivers the watchdog has quarantined.</summary>
    public IReadOnlyList<DriverInfo> GetQuarantined() => [.. GetDrivers().Where(d => d.State == DriverState.Quarantined)];

    /// <summary>Enables a quarantined driver again: a fresh supervisor (with a clean failure
    /// record) restarts it at once.</summary>
    public void Reenable(string driverName)
    {
        KernelDriver driver;
        lock (_gate)
        {
            driver = _drivers.FirstOrDefault(d => d.Name.Equals(driverName, StringComparison.OrdinalIgnoreCase))
                ?? throw new KeyNotFoundException($"no driver named {driverName}");
        }

        lock (driver.Gate)
        {
            if (driver.State != DriverState.Quarantined)
            {
                throw new InvalidOperationException($"{driver.Name} is {driver.State}, not quarantined");
            }

            driver.SetState(DriverState.Restarting);
            driver.QuarantineDemand = null;
        }

        Events.Add(KernelEventKind.DriverReenabled, driver.Name, null, "re-enabled by hand");
        driver.DownTimestamp = _time.GetTimestamp();
        Supervise(driver, instanceLoaded: false);
    }

    private InKernelHostChannel InKernel()
    {
        lock (_gate)
        {
            return _inKernel ??= new InKernelHostChannel(_io, _loggerFactory);
        }
    }

    private DeviceInfo Describe(KernelDevice device) => new(
        device.Name,
        device.DeviceType,
        _namespace.LinksTo(device.Name),
        [.. device.Layers.Select(l => new DeviceLayerInfo(l.Driver.Name, l.Host.Name, l.Host.ProcessId, l.Driver.Isolation))],
        device.Statistics.Snapshot());
}
