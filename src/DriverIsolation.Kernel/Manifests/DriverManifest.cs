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

    /// <summary>Shared-host isolation only: drivers with the same group share one host.</summary>
    public string HostGroup { get; init; } = "shared";

    public IReadOnlyDictionary<string, string> Parameters { get; init; } = new Dictionary<string, string>();

    /// <summary>Devices this function driver creates (empty for a filter).</summary>
    public IReadOnlyList<DeviceManifest> Devices { get; init; } = [];

    /// <summary>Devices this filter driver attaches above (empty for a function driver).</summary>
    public IReadOnlyList<string> AttachTo { get; init; } = [];

    public DriverLimits Limits { get; init; } = new();

    /// <summary>Where the manifest came from (a path, or "embedded:..."), for error messages and
    /// resolving a relative assembly path.</summary>
    public string Source { get; init; } = "(code)";

    public bool IsFilter => AttachTo.Count > 0;
}

public sealed record DeviceManifest
{
    /// <summary>The device's name in the namespace, e.g. <c>\Device\RamDisk0</c>.</summary>
    public required string Name { get; init; }

    public DeviceType Type { get; init; } = DeviceType.Unknown;

    /// <summary>Symbolic links to the device, e.g. <c>\??\RamDisk0</c>.</summary>
    public IReadOnlyList<string> Links { get; init; } = [];

    public IReadOnlyDictionary<string, string> Parameters { get; init; } = new Dictionary<string, string>();
}

public sealed record DriverLimits
{
    /// <summary>Deadline of every IRP to this driver's devices; past it the IRP completes with
    /// IoTimeout. Null: the kernel's default. Protects callers from a driver that never answers.</summary>
    public TimeSpan? RequestTimeout { get; init; }
}
