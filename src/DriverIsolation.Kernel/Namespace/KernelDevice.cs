namespace DriverIsolation.Kernel;

/// <summary>A named device and its stack: filters above the function driver. An IRP enters at
/// the top layer (index 0) and each layer may complete it or pass it one layer down.</summary>
internal sealed class KernelDevice(string name, DeviceType deviceType, TimeSpan requestTimeout)
{
    private volatile DeviceLayer[] _layers = [];

    public string Name { get; } = name;

    public DeviceType DeviceType { get; } = deviceType;

    /// <summary>The deadline of each IRP sent to this device.</summary>
    public TimeSpan RequestTimeout { get; set; } = requestTimeout;

    /// <summary>Top to bottom. Replaced, never mutated, so readers need no lock.</summary>
    public DeviceLayer[] Layers => _layers;

    public DeviceStatistics Statistics { get; } = new();

    /// <summary>Open handles, remembered so a restarted driver can be told about them again.</summary>
    public System.Collections.Concurrent.ConcurrentDictionary<long, FileObject> OpenFiles { get; } = new();

    public int IndexOf(KernelDriver driver) => Array.FindIndex(_layers, l => l.Driver == driver);

    public void AddBottom(DeviceLayer layer) => _layers = [.. _layers, layer];

    public void AddTop(DeviceLayer layer) => _layers = [layer, .. _layers];
}

/// <summary>One layer of a device stack: a device object of one driver in one host.</summary>
internal sealed record DeviceLayer(int DeviceId, KernelDriver Driver)
{
    public IHostChannel Host => Driver.Host;
}
