using DriverIsolation.Kernel;

namespace DriverIsolation.Campaigns;

/// <summary>
/// A fault-injection campaign as a researcher writes it (a JSON file; docs/scenario.schema.json):
/// the machine, the drivers, the workload, the faults, how many trials, the seed, and the
/// isolation models and IOMMU modes to compare. <see cref="ScenarioLoader"/> builds it and
/// refuses a file with any error, naming the field.
/// </summary>
public sealed record Scenario
{
    public required string Name { get; init; }

    public string Description { get; init; } = "";

    public required int Seed { get; init; }

    public required int Trials { get; init; }

    public required MachineSpec Machine { get; init; }

    public required IReadOnlyList<ScenarioDriver> Drivers { get; init; }

    public required WorkloadSpec Workload { get; init; }

    public required IReadOnlyList<ScenarioFault> Faults { get; init; }

    /// <summary>The isolation models to compare; every driver runs in the trial's model unless
    /// its entry pins one.</summary>
    public required IReadOnlyList<IsolationModel> Isolation { get; init; }

    public required IReadOnlyList<Kernel.Hardware.IommuMode> Iommu { get; init; }

    /// <summary>The devices (names and links) whose stack holds <paramref name="driver"/>, by
    /// the manifests: those it creates and, for a filter, those it attaches to. A device that
    /// never came up (its driver quarantined at boot) is still the faulty driver's.</summary>
    public IReadOnlySet<string> DevicesOf(string driver)
    {
        var manifest = Drivers.First(d => d.Manifest.Name.Equals(driver, StringComparison.OrdinalIgnoreCase)).Manifest;
        var names = manifest.Devices.Select(d => d.Name).Concat(manifest.AttachTo).ToHashSet(StringComparer.OrdinalIgnoreCase);
        return Drivers.SelectMany(d => d.Manifest.Devices)
            .Where(d => names.Contains(d.Name) || d.Links.Any(names.Contains))
            .SelectMany(d => d.Links.Prepend(d.Name))
            .ToHashSet(StringComparer.OrdinalIgnoreCase);
    }
}

/// <summary>The simulated machine: physical memory and the IOMMU's mode when the scenario
/// compares none.</summary>
public sealed record MachineSpec(int MemoryMb, Kernel.Hardware.IommuMode Iommu);

/// <summary>A driver of the scenario: its manifest (with the scenario's overrides applied) and
/// whether its isolation is pinned (it then ignores the model under comparison).</summary>
public sealed record ScenarioDriver(DriverManifest Manifest, IsolationModel? PinnedIsolation);

/// <summary>What the clients do: on each device, <see cref="Clients"/> clients each issue
/// <see cref="RequestsPerClient"/> requests one after another, reads and writes in the given
/// mix, each <see cref="RequestBytes"/> long; written data is checked when read back. A request
/// still outstanding <see cref="TimeLimitMs"/> after the workload started is lost.</summary>
public sealed record WorkloadSpec(
    IReadOnlyList<string> Devices,
    int Clients,
    int RequestsPerClient,
    double ReadFraction,
    int RequestBytes,
    int RatePerSecond,
    bool Verify,
    int TimeLimitMs = 20_000);

/// <summary>A fault: its type, the driver it is injected into, and its trigger.</summary>
public sealed record ScenarioFault(string Type, string Driver, FaultTrigger Trigger, bool Repeat, IReadOnlyDictionary<string, string> Parameters);

/// <summary>When a fault fires: at load, after N requests to the driver, N ms after its load, or
/// with probability p per request.</summary>
public sealed record FaultTrigger(string Kind, double Value)
{
    public override string ToString() => Kind switch
    {
        "load" => "on load",
        "requests" => $"after {Value} requests",
        "time" => $"at {Value} ms",
        _ => $"with p={Value} per request",
    };
}
