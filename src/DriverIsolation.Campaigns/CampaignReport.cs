using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace DriverIsolation.Campaigns;

/// <summary>One row of the summary: a cell (isolation model, IOMMU mode, fault) over its trials.</summary>
public sealed record SummaryRow(
    [property: JsonPropertyName("isolation")] string Isolation,
    [property: JsonPropertyName("iommu")] string Iommu,
    [property: JsonPropertyName("fault")] string Fault,
    [property: JsonPropertyName("driver")] string Driver,
    [property: JsonPropertyName("trials")] int Trials,
    [property: JsonPropertyName("faults_fired")] int FaultsFired,
    [property: JsonPropertyName("system_survival")] double SystemSurvival,
    [property: JsonPropertyName("booted")] double Booted,
    [property: JsonPropertyName("safe_mode")] int SafeMode,
    [property: JsonPropertyName("innocent_devices_hurt")] double InnocentDevicesHurt,
    [property: JsonPropertyName("faulty_device_hurt")] double FaultyDeviceHurt,
    [property: JsonPropertyName("irps_lost")] int IrpsLost,
    [property: JsonPropertyName("irps_failed")] int IrpsFailed,
    [property: JsonPropertyName("data_verified")] double DataVerified,
    [property: JsonPropertyName("hangs")] int Hangs,
    [property: JsonPropertyName("quarantines")] int Quarantines,
    [property: JsonPropertyName("iommu_faults")] long IommuFaults,
    [property: JsonPropertyName("detection_p50_ms")] double? DetectionP50Ms,
    [property: JsonPropertyName("recovery_p50_ms")] double? RecoveryP50Ms,
    [property: JsonPropertyName("recovery_p99_ms")] double? RecoveryP99Ms);

/// <summary>A row in the form of the Nooks and MINIX 3 tables: per isolation model and IOMMU mode,
/// over every fault.</summary>
public sealed record ContainmentRow(
    [property: JsonPropertyName("isolation")] string Isolation,
    [property: JsonPropertyName("iommu")] string Iommu,
    [property: JsonPropertyName("faults_injected")] int FaultsInjected,
    [property: JsonPropertyName("driver_failures")] int DriverFailures,
    [property: JsonPropertyName("system_crashes")] int SystemCrashes,
    [property: JsonPropertyName("hangs")] int Hangs,
    [property: JsonPropertyName("crashes_prevented")] double? CrashesPrevented);

/// <summary>The campaign's report: what <c>report.json</c> holds, built from the trials' verdicts
/// alone (so shards merged give the report a single run gives).</summary>
public sealed record CampaignReport(
    [property: JsonPropertyName("scenario")] string Scenario,
    [property: JsonPropertyName("seed")] int Seed,
    [property: JsonPropertyName("trials")] int Trials,
    [property: JsonPropertyName("summary")] IReadOnlyList<SummaryRow> Summary,
    [property: JsonPropertyName("containment")] IReadOnlyList<ContainmentRow> Containment)
{
    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public static CampaignReport Build(string scenario, int seed, IReadOnlyList<TrialVerdict> verdicts)
    {
        var ordered = verdicts.OrderBy(v => v.Index).ToList();
        var summary = ordered
            .GroupBy(v => (v.Isolation, v.Iommu, v.Fault, v.Driver))
            .Select(g =>
            {
                var list = g.ToList();
                var innocent = list.Sum(v => v.InnocentDevices);
                var recovery = list.Where(v => v.RecoveryMs is not null).Select(v => v.RecoveryMs!.Value).ToList();
                var detection = list.Where(v => v.DetectionMs is not null).Select(v => v.DetectionMs!.Value).ToList();
                return new SummaryRow(g.Key.Isolation, g.Key.Iommu, g.Key.Fault, g.Key.Driver, list.Count,
                    list.Count(v => v.FaultFired),
                    Fraction(list.Count(v => v.SystemSurvived), list.Count),
                    Fraction(list.Count(v => v.Booted), list.Count),
                    list.Count(v => v.SafeMode),
                    innocent == 0 ? 0 : Fraction(list.Sum(v => v.InnocentDevicesHurt), innocent),
                    Fraction(list.Count(v => v.FaultyDeviceHurt), list.Count),
                    list.Sum(v => v.IrpsLost),
                    list.Sum(v => v.IrpsFailed),
                    Fraction(list.Count(v => v.DataVerified), list.Count),
                    list.Count(v => v.Hung),
                    list.Count(v => v.Quarantined),
                    list.Sum(v => v.IommuFaults),
                    Percentile(detection, 0.50),
                    Percentile(recovery, 0.50),
                    Percentile(recovery, 0.99));
            })
            .ToList();
        var containment = ordered
            .GroupBy(v => (v.Isolation, v.Iommu))
            .Select(g =>
            {
                var list = g.ToList();
                var failures = list.Count(DriverFailed);
                var crashes = list.Count(v => !v.SystemSurvived);
                return new ContainmentRow(g.Key.Isolation, g.Key.Iommu, list.Count(v => v.FaultFired), failures, crashes, list.Count(v => v.Hung),
                    failures == 0 ? null : Math.Round(1 - ((double)Math.Min(crashes, failures) / failures), 4));
            })
            .ToList();
        return new CampaignReport(scenario, seed, ordered.Count, summary, containment);
    }

    /// <summary>The fault showed: the driver's instance died, was quarantined, hung a request,
    /// lost its device's requests, or took the system down.</summary>
    private static bool DriverFailed(TrialVerdict v) =>
        v.FaultFired && (v.Restarts > 0 || v.Quarantined || v.Hung || v.FaultyDeviceHurt || !v.SystemSurvived);

    private static double Fraction(int part, int whole) => whole == 0 ? 0 : Math.Round((double)part / whole, 4);

    /// <summary>Nearest-rank percentile, rounded to 0.1 ms; null for no samples.</summary>
    public static double? Percentile(IReadOnlyList<double> samples, double p)
    {
        if (samples.Count == 0)
        {
            return null;
        }

        var sorted = samples.Order().ToList();
        var rank = Math.Max(1, (int)Math.Ceiling(p * sorted.Count));
        return Math.Round(sorted[rank - 1], 1);
    }

    /// <summary>Writes report.json, trials.json (every verdict: what <c>drviso merge</c> reads),
    /// trials.csv, report.md and the figures (PNG and SVG).</summary>
    public void Write(string directory, IReadOnlyList<TrialVerdict> verdicts)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "report.json"), JsonSerializer.Serialize(this, Json));
        File.WriteAllText(Path.Combine(directory, "trials.json"), JsonSerializer.Serialize(verdicts.OrderBy(v => v.Index), Json));
        File.WriteAllText(Path.Combine(directory, "trials.csv"), Csv(verdicts));
        File.WriteAllText(Path.Combine(directory, "report.md"), Markdown());
        CampaignPlots.Write(directory, verdicts);
    }

    public static string Csv(IReadOnlyList<TrialVerdict> verdicts)
    {
        var csv = new StringBuilder();
        csv.AppendLine("index,trial,seed,isolation,iommu,fault,driver,fault_fired,system_survived,booted,safe_mode,faulty_device_hurt,innocent_devices,innocent_devices_hurt,irps_lost,irps_failed,data_verified,hung,restarts,quarantined,iommu_faults,detection_ms,recovery_ms,crash");
        foreach (var v in verdicts.OrderBy(v => v.Index))
        {
            csv.AppendLine(string.Join(',',
                I(v.Index), I(v.Trial), I(v.Seed), v.Isolation, v.Iommu, v.Fault, v.Driver, B(v.FaultFired), B(v.SystemSurvived), B(v.Booted), B(v.SafeMode),
                B(v.FaultyDeviceHurt), I(v.InnocentDevices), I(v.InnocentDevicesHurt), I(v.IrpsLost), I(v.IrpsFailed), B(v.DataVerified), B(v.Hung),
                I(v.Restarts), B(v.Quarantined), v.IommuFaults.ToString(CultureInfo.InvariantCulture), D(v.DetectionMs), D(v.RecoveryMs), Quote(v.Crash)));
        }

        return csv.ToString();

        static string I(int value) => value.ToString(CultureInfo.InvariantCulture);
        static string B(bool value) => value ? "true" : "false";
        static string D(double? value) => value?.ToString("F1", CultureInfo.InvariantCulture) ?? "";
        static string Quote(string? text) => text is null ? "" : $"\"{text.Replace("\"", "\"\"", StringComparison.Ordinal)}\"";
    }

    public string Markdown()
    {
        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# Campaign report: {Scenario}");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"Seed {Seed}, {Trials} trials. Each trial boots a fresh kernel in its own process and injects one fault.");
        md.AppendLine();
        md.AppendLine("## Blast radius per fault, isolation model and IOMMU mode");
        md.AppendLine();
        md.AppendLine("| fault | driver | isolation | IOMMU | trials | fired | system survival | booted | safe mode | innocent devices hurt | faulty device hurt | IRPs lost | hangs | quarantines | IOMMU faults | detection p50 ms | recovery p50 ms | recovery p99 ms |");
        md.AppendLine("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in Summary)
        {
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {r.Fault} | {r.Driver} | {r.Isolation} | {r.Iommu} | {r.Trials} | {r.FaultsFired} | {Pct(r.SystemSurvival)} | {Pct(r.Booted)} | {r.SafeMode} | {Pct(r.InnocentDevicesHurt)} | {Pct(r.FaultyDeviceHurt)} | {r.IrpsLost} | {r.Hangs} | {r.Quarantines} | {r.IommuFaults} | {Ms(r.DetectionP50Ms)} | {Ms(r.RecoveryP50Ms)} | {Ms(r.RecoveryP99Ms)} |");
        }

        md.AppendLine();
        md.AppendLine("## Containment (in the form of the Nooks and MINIX 3 tables)");
        md.AppendLine();
        md.AppendLine("| isolation | IOMMU | faults injected | driver failures | system crashes | hangs | crashes prevented |");
        md.AppendLine("|---|---|---:|---:|---:|---:|---:|");
        foreach (var r in Containment)
        {
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {r.Isolation} | {r.Iommu} | {r.FaultsInjected} | {r.DriverFailures} | {r.SystemCrashes} | {r.Hangs} | {(r.CrashesPrevented is { } p ? Pct(p) : "-")} |");
        }

        md.AppendLine();
        md.AppendLine("A driver failure is a fired fault that showed: the driver's instance died, was quarantined, hung a request, failed its device's requests, or took the system down. Crashes prevented = 1 - system crashes / driver failures.");
        md.AppendLine();
        md.AppendLine("## Figures");
        md.AppendLine();
        md.AppendLine("![Blast radius by isolation model](blast-radius.png)");
        md.AppendLine();
        md.AppendLine("![Recovery-time CDF](recovery-cdf.png)");
        md.AppendLine();
        md.AppendLine("![System survival by fault type](survival-by-fault.png)");
        md.AppendLine();
        md.AppendLine("(Also as SVG beside this file. Per-trial data: trials.csv; the summary as data: report.json.)");
        return md.ToString();

        static string Pct(double fraction) => (fraction * 100).ToString("F1", CultureInfo.InvariantCulture) + " %";
        static string Ms(double? value) => value?.ToString("F1", CultureInfo.InvariantCulture) ?? "-";
    }
}
