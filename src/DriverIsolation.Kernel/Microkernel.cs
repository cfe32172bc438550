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
    private readonly Lock _gate = new();
    private InKernelHostChannel? _inKernel;
    private int _nextDriverId;
    private int _nextDeviceId;

    public Microkernel(KernelOptions? options = null, ILoggerFactory? loggerFactory = null, TimeProvider? timeProvider = null)
    {
        _options = options ?? new KernelOptions();
        _loggerFactory = loggerFactory ?? NullLoggerFactory.Instance;
        _logger = _loggerFactory.CreateLogger("DriverIsolation.Kernel");
        var time = timeProvider ?? TimeProvider.System;
        Events = new KernelEventLog(time);
        _io = new IoManager(time, Events, _logger, _options);
        _launcher = new HostLauncher(_options, _io, Events, _loggerFactory);
    }

    /// <summary>What the kernel observed: hosts, loads, refusals, timeouts, crashes.</summary>
    public KernelEventLog Events { get; }

    public static int ProcessId => Environment.ProcessId;

    /// <summary>Why the kernel went down, or null while it is up.</summary>
    public string? BugCheckReason => _io.BugCheckReason;

    /// <summary>IRPs in the kernel that have not completed yet.</summary>
    public int OutstandingIrps => _io.OutstandingCount;

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
        lock (_gate)
        {
            _hosts.AddRange(started.Where(s => s.Channel is not null).Select(s => s.Channel!));
        }

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

            var driver = new KernelDriver(Interlocked.Increment(ref _nextDriverId), manifest, isolation, host ?? InKernel());
            lock (_gate)
            {
                _drivers.Add(driver);
            }

            if (host is null)
            {
                FailLoad(driver, hostError ?? "no host");
                continue;
            }

            await LoadAsync(driver, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Opens a device by name or link (IRP_MJ_CREATE).</summary>
    /// <exception cref="IoException">No such device, or the driver refused the open.</exception>
    public async Task<DeviceHandle> OpenAsync(string path, CancellationToken cancellationToken = default)
    {
        var device = _namespace.Resolve(path) ?? throw new IoException(NtStatus.ObjectNameNotFound, $"cannot open {path}");
        var file = _io.NewFileObject(device, path);
        var result = await _io.SubmitAsync(file, MajorFunction.Create, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, cancellationToken).ConfigureAwait(false);
        return result.IsSuccess
            ? new DeviceHandle(_io, file)
            : throw new IoException(result.Status, $"cannot open {path}");
    }

    public IReadOnlyList<DriverInfo> GetDrivers()
    {
        lock (_gate)
        {
            return [.. _drivers.Select(d => new DriverInfo(d.Name, d.Isolation, d.Host.Name, d.Host.ProcessId, d.State, d.Failure))];
        }
    }

    public IReadOnlyList<DeviceInfo> GetDevices() => [.. _namespace.Devices().Select(Describe)];

    /// <summary>The device a name or link leads to; null if none.</summary>
    public DeviceInfo? GetDevice(string path) => _namespace.Resolve(path) is { } device ? Describe(device) : null;

    /// <summary>Kills the host a driver runs in, as a crash would (kill -9). In-kernel, this is a
    /// bug check.</summary>
    public void KillDriverHost(string driverName)
    {
        KernelDriver driver;
        lock (_gate)
        {
            driver = _drivers.FirstOrDefault(d => d.Name.Equals(driverName, StringComparison.OrdinalIgnoreCase))
                ?? throw new ArgumentException($"no driver named {driverName}", nameof(driverName));
        }

        driver.Host.Kill($"killed on request ({driverName})");
    }

    /// <summary>Stops every host (Shutdown, then kill after a grace period) and unloads in-kernel drivers.</summary>
    public async ValueTask DisposeAsync()
    {
        IHostChannel[] hosts;
        lock (_gate)
        {
            hosts = [.. _hosts];
            _hosts.Clear();
            foreach (var driver in _drivers)
            {
                driver.SetStopped();
            }
        }

        await Task.WhenAll(hosts.Select(h => h.DisposeAsync().AsTask())).ConfigureAwait(false);
        if (_inKernel is not null)
        {
            await _inKernel.DisposeAsync().ConfigureAwait(false);
        }
    }

    private async Task LoadAsync(KernelDriver driver, CancellationToken cancellationToken)
    {
        var manifest = driver.Manifest;
        var (status, detail) = await driver.Host.LoadDriverAsync(driver, ManifestLoader.ResolveAssemblyPath(manifest), cancellationToken).ConfigureAwait(false);
        if (!status.IsSuccess())
        {
            FailLoad(driver, detail ?? status.ToString());
            return;
        }

        driver.SetRunning();
        Log.DriverLoaded(_logger, driver.Name, driver.Isolation.ToManifestName(), driver.Host.Name);
        Events.Add(KernelEventKind.DriverLoaded, driver.Name, null, $"{driver.Isolation.ToManifestName()} in {driver.Host.Name} (PID {driver.Host.ProcessId})");

        foreach (var deviceManifest in manifest.Devices)
        {
            var device = new KernelDevice(deviceManifest.Name, deviceManifest.Type, manifest.Limits.RequestTimeout ?? _options.DefaultRequestTimeout);
            var layer = new DeviceLayer(Interlocked.Increment(ref _nextDeviceId), driver);
            device.AddBottom(layer);
            if (await AddDeviceAsync(driver, layer, device, hasLowerDevice: false, deviceManifest.Parameters, cancellationToken).ConfigureAwait(false))
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
        IReadOnlyDictionary<string, string> parameters, CancellationToken cancellationToken)
    {
        var (status, detail) = await driver.Host.AddDeviceAsync(driver, layer, device, hasLowerDevice, parameters, cancellationToken).ConfigureAwait(false);
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
        lock (_gate)
        {
            var hosted = _drivers.Where(d => d.Host == host).ToList();
            stopping = hosted.Count > 0 && hosted.All(d => d.State == DriverState.Stopped);
            foreach (var driver in hosted.Where(d => d.State != DriverState.Stopped))
            {
                driver.SetFailed($"host exited: {reason}");
            }
        }

        var completed = _io.OnHostExited(host);
        if (stopping)
        {
            Log.HostStopped(_logger, host.Name, host.ProcessId, reason);
        }
        else
        {
            Log.HostExited(_logger, host.Name, host.ProcessId, reason, completed);
        }

        Events.Add(KernelEventKind.HostExited, host.Name, null, $"PID {host.ProcessId}: {reason}; {completed} IRPs completed with DriverProcessTerminated");
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
