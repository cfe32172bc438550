using System.Text.Json;
using System.Text.Json.Nodes;
using DriverIsolation.Campaigns;

namespace DriverIsolation.Tests;

/// <summary>
/// <c>drviso run</c> and <c>drviso merge</c> end to end, every trial a kernel process of its own:
/// an in-kernel crash takes its trial's kernel down and is recorded as a system crash while the
/// same fault in a host process is contained; the same scenario and seed give the same verdicts;
/// the shards of a campaign merged give the whole campaign's verdicts; bad input is refused.
/// </summary>
[Collection("processes")]
public sealed class CampaignCommandTests : IDisposable
{
    private const string Scenario = """
        {
          "name": "test-campaign",
          "seed": 11,
          "trials": 2,
          "drivers": [
            { "manifest": "VBlock", "requestTimeoutMs": 5000 },
            { "manifest": "Null" }
          ],
          "workload": { "devices": ["\\??\\VBlock0", "\\??\\NUL"], "requests": 12, "mix": { "read": 0.5, "write": 0.5 } },
          "faults": [
            { "type": "unhandled-exception", "driver": "VBlock", "trigger": { "afterRequests": 6 } },
            { "type": "fail-fast", "driver": "VBlock", "trigger": { "afterRequests": 6 } }
          ],
          "compare": { "isolation": ["in-kernel", "process"], "iommu": ["strict"] }
        }
        """;

    private readonly string _dir = Directory.CreateTempSubdirectory("drviso-campaign-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task Run_ContainsInAHostWhatCrashesInKernel_SameVerdictsTwice_ShardsMergeToTheWhole()
    {
        var scenario = Path.Combine(_dir, "scenario.json");
        await File.WriteAllTextAsync(scenario, Scenario);

        var whole = await Drviso.RunAsync("run", scenario, "--out", Out("whole"), "--parallel", "2");
        Assert.True(whole.ExitCode == 0, whole.Output);

        // Printed to a pipe, the summary table keeps each row on one line (not wrapped at 80 columns).
        Assert.Matches(@"│ unhandled-exception\s+│ in-kernel\s+│ strict\s+│\s+2 │", whole.Output);

        var shard1 = await Drviso.RunAsync("run", scenario, "--out", Out("shard1"), "--shard", "1/2", "--parallel", "2");
        Assert.True(shard1.ExitCode == 0, shard1.Output);
        Assert.Contains("shard 1/2: 4", shard1.Output, StringComparison.Ordinal);
        var shard2 = await Drviso.RunAsync("run", scenario, "--out", Out("shard2"), "--shard", "2/2", "--parallel", "2");
        Assert.True(shard2.ExitCode == 0, shard2.Output);
        var merged = await Drviso.RunAsync("merge", Out("shard1"), Out("shard2"), "--out", Out("merged"));
        Assert.True(merged.ExitCode == 0, merged.Output);

        var verdicts = Verdicts("whole");
        Assert.Equal(8, verdicts.Count);
        Assert.All(verdicts, v => Assert.True(v.FaultFired, v.VerdictKey()));
        Assert.All(verdicts.Where(v => v.Isolation == "in-kernel"), v =>
        {
            Assert.False(v.SystemSurvived);
            Assert.Equal(1, v.InnocentDevicesHurt);
        });
        Assert.All(verdicts.Where(v => v.Isolation == "process"), v =>
        {
            Assert.True(v.SystemSurvived, v.Crash);
            Assert.Equal(0, v.InnocentDevicesHurt);
            Assert.Equal(0, v.IrpsLost);
            Assert.True(v.DataVerified);
            Assert.Equal(1, v.Restarts);
            Assert.NotNull(v.RecoveryMs);
        });

        // The in-kernel fail-fast took its trial's whole process down; the runner recorded it.
        Assert.All(verdicts.Where(v => v is { Isolation: "in-kernel", Fault: "fail-fast" }),
            v => Assert.StartsWith("the kernel process died (SIGABRT", v.Crash, StringComparison.Ordinal));

        // Same scenario, same seed: the same verdicts, in the whole run and in the merged shards.
        Assert.Equal(verdicts.Select(v => v.VerdictKey()), Verdicts("merged").Select(v => v.VerdictKey()));
        Assert.Equal(Summary("whole"), Summary("merged"));

        var report = JsonNode.Parse(await File.ReadAllTextAsync(Path.Combine(Out("whole"), "report.json")))!;
        Assert.Equal(11, report["seed"]!.GetValue<int>());
        var rows = report["summary"]!.AsArray();
        Assert.Equal(4, rows.Count);
        var contained = rows.Single(r => r!["isolation"]!.GetValue<string>() == "process" && r["fault"]!.GetValue<string>() == "unhandled-exception")!;
        Assert.Equal(1.0, contained["system_survival"]!.GetValue<double>());
        Assert.Equal(0.0, contained["innocent_devices_hurt"]!.GetValue<double>());
        Assert.Equal(0, contained["irps_lost"]!.GetValue<int>());
        Assert.NotNull(contained["recovery_p50_ms"]);

        var csv = await File.ReadAllLinesAsync(Path.Combine(Out("whole"), "trials.csv"));
        Assert.Equal(9, csv.Length);
        Assert.StartsWith("index,trial,seed,isolation,iommu,fault,driver,fault_fired,system_survived", csv[0], StringComparison.Ordinal);
        var markdown = await File.ReadAllTextAsync(Path.Combine(Out("whole"), "report.md"));
        Assert.Contains("| in-kernel | strict | 4 | 4 | 4 | 0 | 0.0 % |", markdown, StringComparison.Ordinal);
        Assert.Contains("| process | strict | 4 | 4 | 0 | 0 | 100.0 % |", markdown, StringComparison.Ordinal);

        // The figures, as PNG and SVG.
        foreach (var figure in new[] { "blast-radius", "recovery-cdf", "survival-by-fault" })
        {
            var png = await File.ReadAllBytesAsync(Path.Combine(Out("whole"), $"{figure}.png"));
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
            Assert.Contains("<svg", await File.ReadAllTextAsync(Path.Combine(Out("whole"), $"{figure}.svg")), StringComparison.Ordinal);
        }

        Assert.Contains("![Blast radius by isolation model](blast-radius.png)", markdown, StringComparison.Ordinal);

        // The same shard twice is refused.
        var twice = await Drviso.RunAsync("merge", Out("shard1"), Out("shard1"), "--out", Out("twice"));
        Assert.Equal(2, twice.ExitCode);
        Assert.Contains("is in more than one input", twice.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ChannelFile291_InKernelTheSystemDoesNotBoot_IsolatedItBootsInSafeModeAndServes()
    {
        var scenario = RepositoryFile("scenarios/channel-file-291.json");

        var trace = Path.Combine(_dir, "cf-trace.json");
        var result = await Drviso.RunAsync("run", scenario, "--out", Out("cf"), "--trials", "1", "--parallel", "2", "--trace", trace);

        Assert.True(result.ExitCode == 0, result.Output);
        Assert.Contains($"Trace of 2 trials written to {trace}", result.Output, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(Out("cf"), "traces", "trial-0000.json")));
        Assert.True(File.Exists(Path.Combine(Out("cf"), "traces", "trial-0001.json")));
        using (var json = JsonDocument.Parse(await File.ReadAllTextAsync(trace)))
        {
            // Both trials in one trace, each process named after its trial; the isolated one
            // quarantines the sensor driver and serves, its hosts timing their own stays.
            var events = json.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
            var processes = events.Where(e => e.GetProperty("ph").GetString() == "M").Select(e => e.GetProperty("args").GetProperty("name").GetString()!).ToList();
            Assert.Contains(processes, p => p.StartsWith("trial 0 (in-kernel, IOMMU strict, corrupt-content-update): kernel (PID ", StringComparison.Ordinal));
            Assert.Contains(processes, p => p.StartsWith("trial 1 (process, IOMMU strict, corrupt-content-update): kernel (PID ", StringComparison.Ordinal));
            Assert.Contains(processes, p => p.StartsWith("trial 1 (process, IOMMU strict, corrupt-content-update): host VBlock (PID ", StringComparison.Ordinal));
            Assert.Contains(events, e => e.GetProperty("ph").GetString() == "i" && e.GetProperty("name").GetString() == "DriverQuarantined Sensor");
            Assert.Contains(events, e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("name").GetString() == "VBlock: Read"
                && e.GetProperty("args").GetProperty("timed_by").GetString() == "host");
        }

        var verdicts = Verdicts("cf");
        Assert.Equal(2, verdicts.Count);
        var inKernel = verdicts.Single(v => v.Isolation == "in-kernel");
        Assert.True(inKernel.FaultFired);
        Assert.False(inKernel.Booted);
        Assert.False(inKernel.SystemSurvived);
        Assert.Contains("Sensor faulted in its DriverEntry: IndexOutOfRangeException", inKernel.Crash, StringComparison.Ordinal);

        var isolated = verdicts.Single(v => v.Isolation == "process");
        Assert.True(isolated.FaultFired);
        Assert.True(isolated.Booted);
        Assert.True(isolated.SystemSurvived, isolated.Crash);
        Assert.True(isolated.SafeMode);
        Assert.True(isolated.Quarantined);
        Assert.Equal([@"\??\VBlock0", @"\??\Nic0"], isolated.Devices.Select(d => d.Device));
        Assert.All(isolated.Devices, d =>
        {
            Assert.Equal(100, d.Requests);
            Assert.Equal(0, d.Failed + d.Lost + d.VerifyErrors);
        });
    }

    [Fact]
    public async Task Run_BadScenario_IsRefusedNamingTheField_AndNothingRuns()
    {
        var scenario = Path.Combine(_dir, "bad.json");
        await File.WriteAllTextAsync(scenario, Scenario.Replace("\"afterRequests\": 6 } },", "\"afterRequests\": -6 } },", StringComparison.Ordinal));

        var result = await Drviso.RunAsync("run", scenario, "--out", Out("bad"));

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("faults[0].trigger.afterRequests: expected a whole number from 0 to 2147483647, got -6", result.Output, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Out("bad")));
    }

    private string Out(string name) => Path.Combine(_dir, name);

    private static string RepositoryFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, relative)))
            {
                return Path.Combine(dir.FullName, relative);
            }
        }

        throw new FileNotFoundException(relative);
    }

    private List<TrialVerdict> Verdicts(string name) =>
        JsonSerializer.Deserialize<List<TrialVerdict>>(File.ReadAllText(Path.Combine(Out(name), "trials.json")))!;

    /// <summary>The summary without its timings (they differ from run to run).</summary>
    private List<string> Summary(string name) =>
        [.. JsonSerializer.Deserialize<CampaignReport>(File.ReadAllText(Path.Combine(Out(name), "report.json")))!.Summary
            .Select(r => r with { DetectionP50Ms = null, RecoveryP50Ms = null, RecoveryP99Ms = null })
            .Select(r => r.ToString())];
}
