using System.Text.Json.Serialization;
using DriverIsolation.Kernel;

namespace DriverIsolation.Campaigns;

/// <summary>One trial of a campaign: its place in the whole run (<see cref="Index"/>, which
/// shards split on), its cell (isolation model, IOMMU mode, which fault of the scenario) and its
/// seed, derived from the scenario's seed and the index alone.</summary>
public sealed record TrialSpec(int Index, IsolationModel Isolation, Kernel.Hardware.IommuMode Iommu, int FaultIndex, int Trial, int Seed)
{
    public string IsolationName => Isolation.ToManifestName();

    public string IommuName => Iommu.ToString().ToLowerInvariant();
}

/// <summary>Every trial of a scenario, in a fixed order: fault, then isolation model, then IOMMU
/// mode, then trial number.</summary>
public static class CampaignPlan
{
    public static IReadOnlyList<TrialSpec> Trials(Scenario scenario, int? trialsOverride = null, int? seedOverride = null)
    {
        var trials = trialsOverride ?? scenario.Trials;
        var seed = seedOverride ?? scenario.Seed;
        var list = new List<TrialSpec>();
        for (var fault = 0; fault < scenario.Faults.Count; fault++)
        {
            foreach (var isolation in scenario.Isolation)
            {
                foreach (var iommu in scenario.Iommu)
                {
                    for (var trial = 0; trial < trials; trial++)
                    {
                        var index = list.Count;
                        list.Add(new TrialSpec(index, isolation, iommu, fault, trial, Mix(seed, index)));
                    }
                }
            }
        }

        return list;
    }

    /// <summary>A trial's seed: the campaign's seed and the trial's index, mixed (SplitMix64's
    /// finalizer) so neighbouring trials get unrelated streams.</summary>
    public static int Mix(int seed, int index)
    {
        var z = ((ulong)(uint)seed << 32) + (ulong)(uint)index + 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return (int)((z ^ (z >> 31)) & 0x7FFF_FFFF);
    }
}

/// <summary>What one device went through in a trial.</summary>
public sealed record DeviceOutcome(
    [property: JsonPropertyName("device")] string Device,
    [property: JsonPropertyName("faulty")] bool Faulty,
    [property: JsonPropertyName("requests")] int Requests,
    [property: JsonPropertyName("failed")] int Failed,
    [property: JsonPropertyName("lost")] int Lost,
    [property: JsonPropertyName("verify_errors")] int VerifyErrors,
    [property: JsonPropertyName("driver_failed")] bool DriverFailed = false)
{
    /// <summary>A client saw it: a request failed, was lost or read back wrong.</summary>
    [JsonIgnore]
    public bool Hurt => Failed + Lost + VerifyErrors > 0;

    /// <summary>In the blast radius: a client saw it, or a driver of its stack died (was
    /// restarted, quarantined or failed) even if retries hid that from the clients.</summary>
    [JsonIgnore]
    public bool Affected => Hurt || DriverFailed;
}

/// <summary>
/// The verdict of one trial. The verdict fields (everything but the timings, the per-device
/// request counts, which depend on what happened to be in flight, and <see cref="Note"/>) are
/// the same for the same scenario and seed.
/// </summary>
public sealed record TrialVerdict
{
    [JsonPropertyName("index")] public required int Index { get; init; }

    [JsonPropertyName("trial")] public required int Trial { get; init; }

    [JsonPropertyName("seed")] public required int Seed { get; init; }

    [JsonPropertyName("isolation")] public required string Isolation { get; init; }

    [JsonPropertyName("iommu")] public required string Iommu { get; init; }

    [JsonPropertyName("fault")] public required string Fault { get; init; }

    [JsonPropertyName("driver")] public required string Driver { get; init; }

    /// <summary>The shim reported the fault (a trigger that never came leaves this false).</summary>
    [JsonPropertyName("fault_fired")] public required bool FaultFired { get; init; }

    /// <summary>The kernel is up at the end, has not bug-checked, and its memory is intact.</summary>
    [JsonPropertyName("system_survived")] public required bool SystemSurvived { get; init; }

    /// <summary>Why not, when it did not.</summary>
    [JsonPropertyName("crash")] public string? Crash { get; init; }

    [JsonPropertyName("booted")] public required bool Booted { get; init; }

    [JsonPropertyName("safe_mode")] public required bool SafeMode { get; init; }

    [JsonPropertyName("faulty_device_hurt")] public required bool FaultyDeviceHurt { get; init; }

    [JsonPropertyName("innocent_devices")] public required int InnocentDevices { get; init; }

    [JsonPropertyName("innocent_devices_hurt")] public required int InnocentDevicesHurt { get; init; }

    [JsonPropertyName("irps_lost")] public required int IrpsLost { get; init; }

    [JsonPropertyName("data_verified")] public required bool DataVerified { get; init; }

    [JsonPropertyName("restarts")] public required int Restarts { get; init; }

    [JsonPropertyName("quarantined")] public required bool Quarantined { get; init; }

    [JsonPropertyName("iommu_faults")] public required long IommuFaults { get; init; }

    [JsonPropertyName("irps_failed")] public required int IrpsFailed { get; init; }

    /// <summary>A request outlived its deadline (the driver hung it, or the kernel could not
    /// answer in time).</summary>
    [JsonPropertyName("hung")] public required bool Hung { get; init; }

    [JsonPropertyName("detection_ms")] public double? DetectionMs { get; init; }

    [JsonPropertyName("recovery_ms")] public double? RecoveryMs { get; init; }

    [JsonPropertyName("devices")] public required IReadOnlyList<DeviceOutcome> Devices { get; init; }

    [JsonPropertyName("note")] public string? Note { get; init; }

    /// <summary>The fields that must not change between runs of the same scenario and seed.
    /// Whether the faulty driver's own clients saw an error (<see cref="FaultyDeviceHurt"/>) and
    /// whether a request outlived its deadline (<see cref="Hung"/>) are not among them: after a
    /// crash they depend on whether the restart beat the requests' deadlines.</summary>
    public string VerdictKey() =>
        string.Join('|', Index, Trial, Seed, Isolation, Iommu, Fault, Driver, FaultFired, SystemSurvived, Booted, SafeMode,
            InnocentDevices, InnocentDevicesHurt, IrpsLost, DataVerified, Quarantined);
}
