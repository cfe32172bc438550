using System.Text.Json.Serialization;

namespace DriverIsolation.Cli.Chaos;

/// <summary>What a chaos run measured; the JSON names are the report's contract.</summary>
internal sealed record ChaosReport
{
    [JsonPropertyName("duration_s")] public double DurationSeconds { get; init; }

    [JsonPropertyName("seed")] public int Seed { get; init; }

    [JsonPropertyName("issued")] public long Issued { get; init; }

    [JsonPropertyName("completed")] public required SortedDictionary<string, long> Completed { get; init; }

    [JsonPropertyName("lost")] public long Lost { get; init; }

    [JsonPropertyName("duplicated")] public long Duplicated { get; init; }

    [JsonPropertyName("kills")] public int Kills { get; init; }

    [JsonPropertyName("restarts")] public int Restarts { get; init; }

    [JsonPropertyName("recovery_p50_ms")] public double RecoveryP50Ms { get; init; }

    [JsonPropertyName("recovery_p99_ms")] public double RecoveryP99Ms { get; init; }

    [JsonPropertyName("data_verified")] public bool DataVerified { get; init; }

    [JsonPropertyName("verified_blocks")] public long VerifiedBlocks { get; init; }

    [JsonPropertyName("verified_messages")] public long VerifiedMessages { get; init; }

    [JsonPropertyName("kernel_alive")] public bool KernelAlive { get; init; }

    [JsonPropertyName("quarantined")] public required IReadOnlyList<string> Quarantined { get; init; }

    [JsonPropertyName("problems")] public required IReadOnlyList<string> Problems { get; init; }

    [JsonIgnore]
    public bool InvariantsHold => Lost == 0 && Duplicated == 0 && DataVerified && KernelAlive;
}
