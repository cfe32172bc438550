namespace DriverIsolation.Kernel;

public enum DriverState
{
    Loading,
    Running,

    /// <summary>Its host is gone (crashed, killed, or the driver failed to load).</summary>
    Failed,
    Stopped,
}

/// <summary>The kernel's record of one driver: its manifest, where it runs, and its state.</summary>
internal sealed class KernelDriver(int id, DriverManifest manifest, IsolationModel isolation, IHostChannel host)
{
    private volatile string? _failure;
    private volatile int _state = (int)DriverState.Loading;

    public int Id { get; } = id;

    public DriverManifest Manifest { get; } = manifest;

    public string Name => Manifest.Name;

    public IsolationModel Isolation { get; } = isolation;

    public IHostChannel Host { get; } = host;

    public DriverState State => (DriverState)_state;

    public bool IsRunning => _state == (int)DriverState.Running;

    public string? Failure => _failure;

    public List<KernelDevice> Devices { get; } = [];

    public void SetRunning() => _state = (int)DriverState.Running;

    public void SetStopped() => _state = (int)DriverState.Stopped;

    public void SetFailed(string reason)
    {
        _failure ??= reason;
        _state = (int)DriverState.Failed;
    }
}
