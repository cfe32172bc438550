using System.Text.Json;
using DriverIsolation.Campaigns;

namespace DriverIsolation.Tests;

/// <summary>
/// Every fault type, injected by <c>drviso run</c> into the unchanged VBlock driver under load,
/// gives its expected verdict in each isolation model (and, for the faults that program the
/// device's DMA, in each IOMMU mode): what crashes a kernel in-kernel is a restart in a process of
/// its own, innocent devices unhurt; a wild DMA is a system crash with the IOMMU off whatever the
/// isolation, and a recorded, contained fault with it strict.
/// </summary>
[Collection("processes")]
public sealed class FaultVerdictTableTests : IDisposable
{
    /// <summary>What a trial must show: whether the system survived, how many innocent devices
    /// were hurt (of 2: Nic0 and NUL), whether VBlock was restarted or quarantined, and whether
    /// the IOMMU recorded a fault.</summary>
    private sealed record Expected(bool Survived, int InnocentHurt, bool Restarted, bool Quarantined, bool IommuFault);

    private static readonly Expected Crash = new(false, 2, false, false, false);
    private static readonly Expected Restarted = new(true, 0, true, false, false);
    private static readonly Expected Unhurt = new(true, 0, false, false, false);

    /// <summary>Faults on requests and at load, IOMMU strict: (in-kernel, process).</summary>
    private static readonly Dictionary<string, (Expected InKernel, Expected Process)> RequestFaults = new()
    {
        ["unhandled-exception"] = (Crash, Restarted),
        ["fail-fast"] = (Crash, Restarted),
        ["stack-overflow"] = (Crash, Restarted),
        ["wild-write"] = (Crash, Restarted),
        ["corrupt-content-update"] = (Crash, new(true, 0, false, true, false)),
        ["hang"] = (Unhurt, Restarted),
        ["infinite-loop"] = (Unhurt, Restarted),
        ["garbage-information"] = (Unhurt, Restarted),
        ["malformed-frame"] = (Unhurt, Restarted),
        ["memory-leak"] = (Unhurt, Restarted),
        ["slow-completion"] = (Unhurt, Unhurt),
        ["wrong-status"] = (Unhurt, Unhurt),
        ["double-completion"] = (Unhurt, Unhurt),
        ["foreign-completion"] = (Unhurt, Unhurt),
    };

    /// <summary>DMA faults: (IOMMU off, IOMMU strict) for (in-kernel, process). With the IOMMU
    /// strict an in-kernel driver is not restarted (there is no host to kill); its request fails.</summary>
    private static readonly Dictionary<string, ((Expected InKernel, Expected Process) Off, (Expected InKernel, Expected Process) Strict)> DmaFaults = new()
    {
        ["wild-dma-kernel"] = ((Crash, Crash), (new(true, 0, false, false, true), new(true, 0, true, false, true))),
        ["wild-dma-other-driver"] = ((new(true, 1, false, false, false), new(true, 1, false, false, false)), (new(true, 0, false, false, true), new(true, 0, true, false, true))),
        ["wild-dma-unmapped"] = ((Unhurt, Unhurt), (new(true, 0, false, false, true), new(true, 0, true, false, true))),
        ["dma-after-unmap"] = ((Unhurt, Unhurt), (new(true, 0, false, false, true), new(true, 0, true, false, true))),
    };

    private readonly string _dir = Directory.CreateTempSubdirectory("drviso-verdicts-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task EachFaultType_GivesItsVerdict_InEachIsolationModel_AndIommuMode()
    {
        Assert.Equal(Enumerable.Order(DriverHost.FaultTypes.All), Enumerable.Order(RequestFaults.Keys.Concat(DmaFaults.Keys)));

        var requests = await RunAsync("requests", RequestFaults.Keys, """["strict"]""");
        var dma = await RunAsync("dma", DmaFaults.Keys, """["off", "strict"]""");

        Assert.Equal(RequestFaults.Count * 2, requests.Count);
        Assert.Equal(DmaFaults.Count * 4, dma.Count);
        var failures = new List<string>();
        foreach (var v in requests.Concat(dma))
        {
            var expected = RequestFaults.TryGetValue(v.Fault, out var pair)
                ? pair
                : v.Iommu == "off" ? DmaFaults[v.Fault].Off : DmaFaults[v.Fault].Strict;
            var want = v.Isolation == "in-kernel" ? expected.InKernel : expected.Process;
            var got = new Expected(v.SystemSurvived, v.InnocentDevicesHurt, v.Restarts > 0, v.Quarantined, v.IommuFaults > 0);
            if (!v.FaultFired || got != want)
            {
                failures.Add($"{v.Fault} {v.Isolation} iommu {v.Iommu}: fired {v.FaultFired}, expected {want}, got {got} ({v.Crash})");
            }
        }

        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));
    }

    private async Task<List<TrialVerdict>> RunAsync(string name, IEnumerable<string> faults, string iommu)
    {
        var list = string.Join(",\n", faults.Select(f => f switch
        {
            "corrupt-content-update" => $$"""{ "type": "{{f}}", "driver": "VBlock", "trigger": { "onLoad": true } }""",
            "wild-dma-other-driver" => $$"""{ "type": "{{f}}", "driver": "VBlock", "trigger": { "afterRequests": 6 }, "parameters": { "device": "\\Device\\Nic1" } }""",
            "memory-leak" => $$"""{ "type": "{{f}}", "driver": "VBlock", "trigger": { "afterRequests": 6 }, "parameters": { "capMb": 256 } }""",
            "slow-completion" => $$"""{ "type": "{{f}}", "driver": "VBlock", "trigger": { "afterRequests": 6 }, "parameters": { "delayMs": 300 } }""",
            _ => $$"""{ "type": "{{f}}", "driver": "VBlock", "trigger": { "afterRequests": 6 } }""",
        }));
        var scenario = Path.Combine(_dir, $"{name}.json");
        await File.WriteAllTextAsync(scenario, $$"""
            {
              "name": "verdict-table-{{name}}",
              "seed": 3,
              "trials": 1,
              "drivers": [
                { "manifest": "VNic", "requestTimeoutMs": 2000 },
                { "manifest": "VBlock", "requestTimeoutMs": 2000, "critical": true, "memoryMb": 120, "recovery": { "inFlight": "retry", "maxFailures": 3 } },
                { "manifest": "Null", "requestTimeoutMs": 2000 }
              ],
              "workload": { "devices": ["\\??\\VBlock0", "\\??\\Nic0", "\\??\\NUL"], "clients": 2, "requests": 30,
                            "mix": { "read": 0.5, "write": 0.5 }, "requestBytes": 4096, "verify": true },
              "faults": [ {{list}} ],
              "compare": { "isolation": ["in-kernel", "process"], "iommu": {{iommu}} }
            }
            """);
        var output = Path.Combine(_dir, name);
        // 28 trials of up to a few seconds each (an in-kernel infinite loop holds a CPU for over
        // 10 s): about 80 s on an idle machine, so a loaded one gets a generous bound.
        var result = await Drviso.RunAsync(TimeSpan.FromMinutes(8), "run", scenario, "--out", output, "--parallel", "2");
        Assert.True(result.ExitCode == 0, result.Output);
        return JsonSerializer.Deserialize<List<TrialVerdict>>(await File.ReadAllTextAsync(Path.Combine(output, "trials.json")))!;
    }
}
