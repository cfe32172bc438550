using System.Text.Json.Nodes;
using DriverIsolation.Campaigns;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// Scenario files: a good one loads with every field as written and the scenario's overrides
/// applied to the drivers' manifests; each kind of bad one is refused with an error that names
/// the field and what was expected, and nothing is built from it.
/// </summary>
public sealed class ScenarioLoaderTests
{
    private const string Good = """
        {
          "name": "vblock-crash",
          "description": "the disk driver crashes once under load",
          "seed": 42,
          "trials": 20,
          "machine": { "memoryMb": 32, "iommu": "strict" },
          "drivers": [
            { "manifest": "VBlock", "requestTimeoutMs": 800, "critical": true, "recovery": { "inFlight": "retry", "maxFailures": 3 } },
            { "manifest": "Null", "isolation": "process" }
          ],
          "workload": { "devices": ["\\??\\VBlock0", "\\??\\NUL"], "clients": 2, "requests": 100,
                        "mix": { "read": 0.25, "write": 0.75 }, "requestBytes": 4096, "verify": true },
          "faults": [
            { "type": "unhandled-exception", "driver": "VBlock", "trigger": { "afterRequests": 50 } },
            { "type": "slow-completion", "driver": "Null", "trigger": { "probability": 0.01 }, "repeat": true, "parameters": { "delayMs": 20 } }
          ],
          "compare": { "isolation": ["in-kernel", "process"], "iommu": ["off", "strict"] }
        }
        """;

    [Fact]
    public void GoodScenario_LoadsAsWritten_WithTheOverridesApplied()
    {
        var scenario = Load(Good);

        Assert.Equal("vblock-crash", scenario.Name);
        Assert.Equal(42, scenario.Seed);
        Assert.Equal(20, scenario.Trials);
        Assert.Equal(new MachineSpec(32, Kernel.Hardware.IommuMode.Strict), scenario.Machine);
        Assert.Equal([IsolationModel.InKernel, IsolationModel.Process], scenario.Isolation);
        Assert.Equal([Kernel.Hardware.IommuMode.Off, Kernel.Hardware.IommuMode.Strict], scenario.Iommu);

        var vblock = scenario.Drivers[0];
        Assert.Null(vblock.PinnedIsolation);
        Assert.Equal(TimeSpan.FromMilliseconds(800), vblock.Manifest.Limits.RequestTimeout);
        Assert.Contains(MajorFunction.Write, vblock.Manifest.Limits.Critical);
        Assert.Equal(InFlightPolicy.Retry, vblock.Manifest.Recovery.InFlight);
        Assert.Equal(3, vblock.Manifest.Recovery.MaxFailures);
        Assert.Equal(IsolationModel.Process, scenario.Drivers[1].PinnedIsolation);

        Assert.Equal(new WorkloadSpec(scenario.Workload.Devices, 2, 100, 0.25, 4096, 0, true), scenario.Workload);
        Assert.Equal([@"\??\VBlock0", @"\??\NUL"], scenario.Workload.Devices);

        Assert.Equal(2, scenario.Faults.Count);
        Assert.Equal(("unhandled-exception", "VBlock", new FaultTrigger("requests", 50), false), (scenario.Faults[0].Type, scenario.Faults[0].Driver, scenario.Faults[0].Trigger, scenario.Faults[0].Repeat));
        Assert.Equal(new FaultTrigger("probability", 0.01), scenario.Faults[1].Trigger);
        Assert.True(scenario.Faults[1].Repeat);
        Assert.Equal("20", scenario.Faults[1].Parameters["delayMs"]);
    }

    public static TheoryData<string, string, string> BadScenarios => new()
    {
        { "$.trials", "0", "trials: expected a whole number from 1 to 1000000, got 0" },
        { "$.seed", "\"forty-two\"", "seed: expected a whole number from 0 to 2147483647, got \"forty-two\"" },
        { "$.trails", "3", "trails: unknown field (expected one of: name, description, seed, trials, machine, drivers, workload, faults, compare)" },
        { "$.name", null!, "name: missing (it is required)" },
        { "$.machine.iommu", "\"paranoid\"", "machine.iommu: expected one of off, strict, lazy, got \"paranoid\"" },
        { "$.drivers[0].manifest", "\"NoSuchDriver\"", "drivers[0].manifest: no driver manifest \"NoSuchDriver\"" },
        { "$.drivers[1].manifest", "\"VBlock\"", "drivers: driver VBlock is listed twice" },
        { "$.drivers[0].recovery.inFlight", "\"pray\"", "drivers[0].recovery.inFlight: expected one of fail, retry, got \"pray\"" },
        { "$.workload.devices[1]", "\"\\\\??\\\\Floppy0\"", "workload.devices[1]: no driver of the scenario creates a device \"\\??\\Floppy0\"" },
        { "$.workload.mix.read", "0.5", "workload.mix: expected read and write fractions that add up to 1, got 0.5 + 0.75" },
        { "$.workload.requestBytes", "1000", "workload.requestBytes: expected a multiple of 512 (a sector), got 1000" },
        { "$.workload.requests", null!, "workload.requests: missing (it is required)" },
        { "$.faults[0].type", "\"cosmic-ray\"", "faults[0].type: expected one of unhandled-exception, fail-fast, stack-overflow, hang, infinite-loop, slow-completion, wrong-status, garbage-information, double-completion, foreign-completion, memory-leak, malformed-frame, corrupt-content-update, wild-dma-kernel, wild-dma-other-driver, wild-dma-unmapped, dma-after-unmap, wild-write, random, got \"cosmic-ray\"" },
        { "$.faults[1].type", "\"wild-dma-kernel\"", "faults[1].type: wild-dma-kernel programs a block device's DMA, and driver Null drives no block hardware" },
        { "$.faults[0].type", "\"wild-dma-other-driver\"", "faults[0].type: wild-dma-other-driver aims at another driver's DMA window: list a driver with DMA hardware (VNic, say) before VBlock in drivers" },
        { "$.faults[0].parameters", "{ \"address\": \"1100\" }", "faults[0].parameters.address: expected a hexadecimal address such as \"0x1100\", got \"1100\"" },
        { "$.faults[0].driver", "\"Sensor\"", "faults[0].driver: no driver named \"Sensor\" in the scenario's drivers (VBlock, Null)" },
        { "$.faults[0].trigger.atMs", "100", "faults[0].trigger: expected exactly one of onLoad, afterRequests, atMs, probability; got afterRequests, atMs" },
        { "$.faults[1].trigger.probability", "1.5", "faults[1].trigger.probability: expected a number from 0 to 1, got 1.5" },
        { "$.faults[1].parameters.delayMs", "[1]", "faults[1].parameters.delayMs: expected a string, number or boolean, got an array of 1" },
        { "$.compare.isolation", "[\"process\", \"kernel\"]", "compare.isolation[1]: expected one of in-kernel, shared-host, process, got \"kernel\"" },
        { "$.compare.iommu", "[]", "compare.iommu: expected an array of at least 1, got an array of 0" },
        { "$.drivers", "{}", "drivers: expected an array, got an object" },
    };

    [Theory]
    [MemberData(nameof(BadScenarios))]
    public void BadScenario_IsRefused_NamingTheFieldAndWhatWasExpected(string path, string? value, string error)
    {
        var json = With(Good, path, value);

        var refused = Assert.Throws<ScenarioException>(() => Load(json));

        Assert.Equal($"test.json: {error}", refused.Message[..Math.Min(refused.Message.Length, $"test.json: {error}".Length)]);
    }

    [Fact]
    public void NotJson_IsRefusedAsSuch()
    {
        var refused = Assert.Throws<ScenarioException>(() => Load("{ \"name\": "));

        Assert.StartsWith("test.json: not valid JSON: ", refused.Message, StringComparison.Ordinal);
    }

    private static Scenario Load(string json) => ScenarioLoader.Parse(json, "test.json", TestManifests.Sample);

    /// <summary>The good scenario with one value replaced (or removed, for a null value); the path
    /// is $.a.b[i].c.</summary>
    private static string With(string json, string path, string? value)
    {
        var root = JsonNode.Parse(json, documentOptions: new System.Text.Json.JsonDocumentOptions { AllowTrailingCommas = true })!;
        var parts = path[2..].Replace("[", ".[", StringComparison.Ordinal).Split('.');
        var node = root;
        foreach (var part in parts[..^1])
        {
            node = part.StartsWith('[') ? node![int.Parse(part[1..^1], System.Globalization.CultureInfo.InvariantCulture)] : node![part];
        }

        var last = parts[^1];
        if (last.StartsWith('['))
        {
            node!.AsArray()[int.Parse(last[1..^1], System.Globalization.CultureInfo.InvariantCulture)] = JsonNode.Parse(value!);
        }
        else if (value is null)
        {
            node!.AsObject().Remove(last);
        }
        else
        {
            node![last] = JsonNode.Parse(value);
        }

        return root.ToJsonString();
    }
}

/// <summary>docs/scenario.schema.json and the loader agree on the fault types.</summary>
public sealed class ScenarioSchemaTests
{
    [Fact]
    public void Schema_FaultTypes_AreTheShimsFaultTypes()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "docs", "scenario.schema.json")))
        {
            dir = dir.Parent;
        }

        Assert.NotNull(dir);
        var schema = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.FullName, "docs", "scenario.schema.json")))!;
        var types = schema["properties"]!["faults"]!["items"]!["properties"]!["type"]!["enum"]!.AsArray().Select(t => t!.GetValue<string>());

        Assert.Equal([.. DriverIsolation.DriverHost.FaultTypes.All, DriverIsolation.DriverHost.FaultTypes.Random], types);
    }
}
