using System.Globalization;
using System.Text.Json;
using DriverIsolation.DriverHost;
using DriverIsolation.Kernel;

namespace DriverIsolation.Campaigns;

/// <summary>A scenario file that cannot run: the message names the file, the field and what was
/// expected. Nothing of the scenario runs.</summary>
public sealed class ScenarioException(string message) : Exception(message);

/// <summary>
/// Reads a scenario file, checking every field against what docs/scenario.schema.json describes
/// (and what JSON Schema cannot say: drivers and devices that exist, faults aimed at a driver of
/// the scenario). The first error ends the load with a <see cref="ScenarioException"/> that names
/// the field, e.g. <c>faults[1].trigger.probability: expected a number from 0 to 1, got 1.5</c>.
/// </summary>
public static class ScenarioLoader
{
    private static readonly string[] Triggers = ["onLoad", "afterRequests", "atMs", "probability"];
    private static readonly string[] TopLevel = ["$schema", "name", "description", "seed", "trials", "machine", "drivers", "workload", "faults", "compare"];

    /// <summary>Loads a scenario file; <paramref name="manifest"/> finds a driver's manifest by
    /// its name or a path (relative paths are resolved beside the scenario before it is called).</summary>
    public static Scenario LoadFile(string path, Func<string, DriverManifest> manifest)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ScenarioException($"{path}: cannot read it: {ex.Message}");
        }

        var directory = Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
        return Parse(text, path, reference => manifest(
            reference.EndsWith(".json", StringComparison.OrdinalIgnoreCase) && !Path.IsPathRooted(reference) ? Path.Combine(directory, reference) : reference));
    }

    public static Scenario Parse(string json, string source, Func<string, DriverManifest> manifest)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException ex)
        {
            throw new ScenarioException($"{source}: not valid JSON: {ex.Message}");
        }

        using (document)
        {
            try
            {
                return Read(new Node(document.RootElement, ""), manifest);
            }
            catch (FieldException ex)
            {
                throw new ScenarioException($"{source}: {ex.Message}");
            }
        }
    }

    private static Scenario Read(Node root, Func<string, DriverManifest> manifestFor)
    {
        root.Object(TopLevel);
        var machineNode = root.Optional("machine");
        machineNode?.Object(["memoryMb", "iommu"]);
        var machine = new MachineSpec(
            machineNode?.Optional("memoryMb")?.Int(16, 4096) ?? 64,
            machineNode?.Optional("iommu") is { } iommu ? ParseIommu(iommu) : Kernel.Hardware.IommuMode.Strict);

        var drivers = new List<ScenarioDriver>();
        foreach (var node in root.Required("drivers").Array(minimum: 1))
        {
            drivers.Add(ReadDriver(node, manifestFor));
        }

        var duplicate = drivers.GroupBy(d => d.Manifest.Name, StringComparer.OrdinalIgnoreCase).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new FieldException("drivers", $"driver {duplicate.Key} is listed twice");
        }

        var devices = drivers.SelectMany(d => d.Manifest.Devices).SelectMany(d => d.Links.Prepend(d.Name)).ToHashSet(StringComparer.OrdinalIgnoreCase);
        var workload = ReadWorkload(root.Required("workload"), devices);

        var faults = new List<ScenarioFault>();
        foreach (var node in root.Required("faults").Array(minimum: 0))
        {
            faults.Add(ReadFault(node, drivers));
        }

        var compare = root.Optional("compare");
        compare?.Object(["isolation", "iommu"]);
        var isolation = compare?.Optional("isolation") is { } models
            ? models.Array(minimum: 1).Select(m => ParseIsolation(m)).Distinct().ToList()
            : [IsolationModel.Process];
        var iommuModes = compare?.Optional("iommu") is { } modes
            ? modes.Array(minimum: 1).Select(ParseIommu).Distinct().ToList()
            : [machine.Iommu];

        return new Scenario
        {
            Name = root.Required("name").String(nonEmpty: true),
            Description = root.Optional("description")?.String(nonEmpty: false) ?? "",
            Seed = root.Required("seed").Int(0, int.MaxValue),
            Trials = root.Required("trials").Int(1, 1_000_000),
            Machine = machine,
            Drivers = drivers,
            Workload = workload,
            Faults = faults,
            Isolation = isolation,
            Iommu = iommuModes,
        };
    }

    private static ScenarioDriver ReadDriver(Node node, Func<string, DriverManifest> manifestFor)
    {
        node.Object(["manifest", "isolation", "bootCritical", "requestTimeoutMs", "critical", "memoryMb", "recovery", "parameters"]);
        var reference = node.Required("manifest").String(nonEmpty: true);
        DriverManifest manifest;
        try
        {
            manifest = manifestFor(reference);
        }
        catch (Exception ex) when (ex is ManifestException or IOException or KeyNotFoundException or UnauthorizedAccessException)
        {
            throw new FieldException(node.Field("manifest"), $"no driver manifest \"{reference}\": {ex.Message}");
        }

        var limits = manifest.Limits;
        if (node.Optional("requestTimeoutMs") is { } timeout)
        {
            limits = limits with { RequestTimeout = TimeSpan.FromMilliseconds(timeout.Int(1, 3_600_000)) };
        }

        if (node.Optional("critical") is { } critical)
        {
            // Critical: a request past its deadline means the driver is hung, and its host is killed.
            limits = limits with { Critical = critical.Bool() ? [MajorFunction.Read, MajorFunction.Write, MajorFunction.DeviceControl, MajorFunction.FlushBuffers] : [] };
        }

        if (node.Optional("memoryMb") is { } memory)
        {
            limits = limits with { MemoryBytes = (long)memory.Int(16, 65536) << 20 };
        }

        var recovery = manifest.Recovery;
        if (node.Optional("bootCritical") is { } bootCritical)
        {
            recovery = recovery with { BootCritical = bootCritical.Bool() };
        }

        if (node.Optional("recovery") is { } r)
        {
            r.Object(["restart", "inFlight", "maxFailures", "failureWindowMs"]);
            if (r.Optional("restart") is { } restart)
            {
                recovery = recovery with { Restart = restart.Bool() };
            }

            if (r.Optional("inFlight") is { } inFlight)
            {
                recovery = recovery with { InFlight = inFlight.Enum(["fail", "retry"]) == "retry" ? InFlightPolicy.Retry : InFlightPolicy.Fail };
            }

            if (r.Optional("maxFailures") is { } maxFailures)
            {
                recovery = recovery with { MaxFailures = maxFailures.Int(0, 1_000_000) };
            }

            if (r.Optional("failureWindowMs") is { } window)
            {
                recovery = recovery with { FailureWindow = TimeSpan.FromMilliseconds(window.Int(1, 86_400_000)) };
            }
        }

        var parameters = new Dictionary<string, string>(manifest.Parameters, StringComparer.Ordinal);
        if (node.Optional("parameters") is { } p)
        {
            foreach (var (name, value) in p.Properties())
            {
                parameters[name] = value.Scalar();
            }
        }

        var pinned = node.Optional("isolation") is { } isolation ? ParseIsolation(isolation) : (IsolationModel?)null;
        return new ScenarioDriver(manifest with { Limits = limits, Recovery = recovery, Parameters = parameters }, pinned);
    }

    private static WorkloadSpec ReadWorkload(Node node, HashSet<string> devices)
    {
        node.Object(["devices", "clients", "requests", "mix", "requestBytes", "ratePerSecond", "verify", "timeLimitMs"]);
        var names = new List<string>();
        foreach (var device in node.Required("devices").Array(minimum: 1))
        {
            var name = device.String(nonEmpty: true);
            if (!devices.Contains(name))
            {
                throw new FieldException(device.Path, $"no driver of the scenario creates a device \"{name}\" (it has: {string.Join(", ", devices.Order(StringComparer.Ordinal))})");
            }

            names.Add(name);
        }

        var readFraction = 0.5;
        if (node.Optional("mix") is { } mix)
        {
            mix.Object(["read", "write"]);
            var read = mix.Optional("read")?.Number(0, 1) ?? 0;
            var write = mix.Optional("write")?.Number(0, 1) ?? 0;
            if (Math.Abs(read + write - 1) > 1e-9)
            {
                throw new FieldException(mix.Path, $"expected read and write fractions that add up to 1, got {read.ToString(CultureInfo.InvariantCulture)} + {write.ToString(CultureInfo.InvariantCulture)}");
            }

            readFraction = read;
        }

        var bytes = node.Optional("requestBytes")?.Int(512, 1 << 20) ?? 4096;
        if (bytes % 512 != 0)
        {
            throw new FieldException(node.Field("requestBytes"), $"expected a multiple of 512 (a sector), got {bytes}");
        }

        return new WorkloadSpec(
            names,
            node.Optional("clients")?.Int(1, 64) ?? 1,
            node.Required("requests").Int(1, 10_000_000),
            readFraction,
            bytes,
            node.Optional("ratePerSecond")?.Int(0, 10_000_000) ?? 0,
            node.Optional("verify")?.Bool() ?? true,
            node.Optional("timeLimitMs")?.Int(1000, 3_600_000) ?? 20_000);
    }

    private static ScenarioFault ReadFault(Node node, List<ScenarioDriver> drivers)
    {
        node.Object(["type", "driver", "trigger", "repeat", "parameters"]);
        var type = node.Required("type").Enum([.. FaultTypes.All, FaultTypes.Random]);
        var driverNode = node.Required("driver");
        var driver = driverNode.String(nonEmpty: true);
        if (!drivers.Any(d => d.Manifest.Name.Equals(driver, StringComparison.OrdinalIgnoreCase)))
        {
            throw new FieldException(driverNode.Path, $"no driver named \"{driver}\" in the scenario's drivers ({string.Join(", ", drivers.Select(d => d.Manifest.Name))})");
        }

        var triggerNode = node.Required("trigger");
        triggerNode.Object(Triggers);
        var given = Triggers.Where(k => triggerNode.Optional(k) is not null).ToList();
        if (given.Count != 1)
        {
            throw new FieldException(triggerNode.Path, $"expected exactly one of onLoad, afterRequests, atMs, probability; got {(given.Count == 0 ? "none" : string.Join(", ", given))}");
        }

        var trigger = given[0] switch
        {
            "onLoad" => triggerNode.Required("onLoad").Bool()
                ? new FaultTrigger("load", 0)
                : throw new FieldException(triggerNode.Field("onLoad"), "expected true (leave it out for another trigger)"),
            "afterRequests" => new FaultTrigger("requests", triggerNode.Required("afterRequests").Int(0, int.MaxValue)),
            "atMs" => new FaultTrigger("time", triggerNode.Required("atMs").Int(0, 3_600_000)),
            _ => new FaultTrigger("probability", triggerNode.Required("probability").Number(0, 1)),
        };

        var parameters = new Dictionary<string, string>(StringComparer.Ordinal);
        if (node.Optional("parameters") is { } p)
        {
            foreach (var property in p.Properties())
            {
                parameters[property.Name] = property.Value.Scalar();
            }
        }

        var target = drivers.First(d => d.Manifest.Name.Equals(driver, StringComparison.OrdinalIgnoreCase));
        CheckAim(node, type, target, drivers, parameters);
        return new ScenarioFault(type, target.Manifest.Name, trigger, node.Optional("repeat")?.Bool() ?? false, parameters);
    }

    /// <summary>DMA faults program a block device, so their driver must drive one; a wild DMA into
    /// another driver's buffer needs that driver's window to exist when the faulty driver loads
    /// (drivers load in the order listed, filters last); an address given must be hexadecimal.</summary>
    private static void CheckAim(Node node, string type, ScenarioDriver target, List<ScenarioDriver> drivers, Dictionary<string, string> parameters)
    {
        if (parameters.TryGetValue("address", out var address)
            && !(address.StartsWith("0x", StringComparison.OrdinalIgnoreCase) && ulong.TryParse(address.AsSpan(2), System.Globalization.NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out _)))
        {
            throw new FieldException(node.Field("parameters") + ".address", $"expected a hexadecimal address such as \"0x1100\", got \"{address}\"");
        }

        if (FaultTypes.Dma.Contains(type) && !target.Manifest.Devices.Any(d => d.Hardware?.Kind == "block"))
        {
            throw new FieldException(node.Field("type"), $"{type} programs a block device's DMA, and driver {target.Manifest.Name} drives no block hardware");
        }

        if (type != "wild-dma-other-driver" || parameters.ContainsKey("address"))
        {
            return;
        }

        var loadOrder = drivers.OrderBy(d => d.Manifest.IsFilter).ToList();
        var earlier = loadOrder.Take(loadOrder.IndexOf(target)).SelectMany(d => d.Manifest.Devices).Where(d => d.Hardware is not null).Select(d => d.Name).ToList();
        if (parameters.TryGetValue("device", out var device))
        {
            if (!earlier.Contains(device, StringComparer.OrdinalIgnoreCase))
            {
                throw new FieldException(node.Field("parameters") + ".device",
                    $"expected a device with DMA hardware of a driver listed before {target.Manifest.Name} ({(earlier.Count == 0 ? "there is none" : string.Join(", ", earlier))}), got \"{device}\"");
            }
        }
        else if (earlier.Count == 0)
        {
            throw new FieldException(node.Field("type"),
                $"wild-dma-other-driver aims at another driver's DMA window: list a driver with DMA hardware (VNic, say) before {target.Manifest.Name} in drivers");
        }
    }

    private static IsolationModel ParseIsolation(Node node) => IsolationModels.Parse(node.Enum(["in-kernel", "shared-host", "process"]));

    private static Kernel.Hardware.IommuMode ParseIommu(Node node) =>
        Enum.Parse<Kernel.Hardware.IommuMode>(node.Enum(["off", "strict", "lazy"]), ignoreCase: true);

    private sealed class FieldException(string path, string message) : Exception($"{path}: {message}");

    /// <summary>A JSON value with its path in the file, and typed reads that fail with the path.</summary>
    private readonly record struct Node(JsonElement Element, string Path)
    {
        public string Field(string name) => Path.Length == 0 ? name : $"{Path}.{name}";

        public void Object(string[] allowed)
        {
            if (Element.ValueKind != JsonValueKind.Object)
            {
                throw Expected("an object");
            }

            foreach (var property in Element.EnumerateObject())
            {
                if (!allowed.Contains(property.Name, StringComparer.Ordinal))
                {
                    throw new FieldException(Field(property.Name), $"unknown field (expected one of: {string.Join(", ", allowed.Where(a => a != "$schema"))})");
                }
            }
        }

        public Node? Optional(string name) =>
            Element.ValueKind == JsonValueKind.Object && Element.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null
                ? new Node(value, Field(name))
                : null;

        public Node Required(string name) => Optional(name) ?? throw new FieldException(Field(name), "missing (it is required)");

        public List<Node> Array(int minimum)
        {
            if (Element.ValueKind != JsonValueKind.Array)
            {
                throw Expected("an array");
            }

            if (Element.GetArrayLength() < minimum)
            {
                throw Expected($"an array of at least {minimum}");
            }

            var path = Path;
            return Element.EnumerateArray().Select((e, i) => new Node(e, $"{path}[{i}]")).ToList();
        }

        public List<(string Name, Node Value)> Properties()
        {
            if (Element.ValueKind != JsonValueKind.Object)
            {
                throw Expected("an object");
            }

            var self = this;
            return Element.EnumerateObject().Select(p => (p.Name, new Node(p.Value, self.Field(p.Name)))).ToList();
        }

        public string String(bool nonEmpty)
        {
            if (Element.ValueKind != JsonValueKind.String || (nonEmpty && Element.GetString()!.Length == 0))
            {
                throw Expected(nonEmpty ? "a non-empty string" : "a string");
            }

            return Element.GetString()!;
        }

        public string Enum(string[] values)
        {
            var text = Element.ValueKind == JsonValueKind.String ? Element.GetString()! : null;
            return text is not null && values.Contains(text, StringComparer.Ordinal)
                ? text
                : throw Expected($"one of {string.Join(", ", values)}");
        }

        public int Int(int minimum, int maximum)
        {
            if (Element.ValueKind != JsonValueKind.Number || !Element.TryGetInt32(out var value) || value < minimum || value > maximum)
            {
                throw Expected($"a whole number from {minimum} to {maximum}");
            }

            return value;
        }

        public double Number(double minimum, double maximum)
        {
            if (Element.ValueKind != JsonValueKind.Number || Element.GetDouble() is var value && (value < minimum || value > maximum))
            {
                throw Expected($"a number from {minimum.ToString(CultureInfo.InvariantCulture)} to {maximum.ToString(CultureInfo.InvariantCulture)}");
            }

            return value;
        }

        public bool Bool() => Element.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Expected("true or false"),
        };

        public string Scalar() => Element.ValueKind switch
        {
            JsonValueKind.String => Element.GetString()!,
            JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => Element.GetRawText(),
            _ => throw Expected("a string, number or boolean"),
        };

        private FieldException Expected(string what) => new(Path.Length == 0 ? "(the file)" : Path, $"expected {what}, got {Describe(Element)}");

        private static string Describe(JsonElement element) => element.ValueKind switch
        {
            JsonValueKind.String => $"\"{element.GetString()}\"",
            JsonValueKind.Object => "an object",
            JsonValueKind.Array => $"an array of {element.GetArrayLength()}",
            _ => element.GetRawText(),
        };
    }
}
