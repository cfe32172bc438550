using System.Globalization;
using System.Text.Json;

namespace DriverIsolation.Kernel;

/// <summary>
/// Reads driver manifests strictly: an unknown field, a wrong type, a missing field or a bad value
/// is a <see cref="ManifestException"/> that says which field and what was expected.
/// </summary>
public static class ManifestLoader
{
    private static readonly string[] DriverFields = ["name", "assembly", "type", "isolation", "transport", "hostGroup", "parameters", "devices", "attachTo", "limits", "recovery"];
    private static readonly string[] DeviceFields = ["name", "type", "links", "parameters", "hardware"];
    private static readonly string[] HardwareFields = ["kind", "capacityMb", "dmaWindowKb", "peer"];
    private static readonly string[] LimitFields = ["requestTimeoutMs", "memoryMb", "handles", "critical"];
    private static readonly string[] RecoveryFields = ["restart", "inFlight", "idempotent", "maxFailures", "failureWindowMs", "quietPeriodMs", "backoffBaseMs", "backoffMaxMs", "bootCritical", "onIommuFault"];

    private static readonly Dictionary<string, MajorFunction> MajorNames = new(StringComparer.Ordinal)
    {
        ["create"] = MajorFunction.Create,
        ["cleanup"] = MajorFunction.Cleanup,
        ["close"] = MajorFunction.Close,
        ["read"] = MajorFunction.Read,
        ["write"] = MajorFunction.Write,
        ["flush"] = MajorFunction.FlushBuffers,
        ["deviceControl"] = MajorFunction.DeviceControl,
        ["internalDeviceControl"] = MajorFunction.InternalDeviceControl,
        ["pnp"] = MajorFunction.Pnp,
        ["power"] = MajorFunction.Power,
    };

    public static DriverManifest LoadFile(string path)
    {
        string json;
        try
        {
            json = File.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ManifestException(path, "$", $"cannot read the manifest: {ex.Message}");
        }

        return Parse(json, Path.GetFullPath(path));
    }

    public static DriverManifest Parse(string json, string source)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true, MaxDepth = 16 });
        }
        catch (JsonException ex)
        {
            throw new ManifestException(source, "$", $"not valid JSON (line {ex.LineNumber + 1}, byte {ex.BytePositionInLine + 1}): {FirstSentence(ex.Message)}");
        }

        using (document)
        {
            var root = document.RootElement;
            var reader = new FieldReader(source, "$", root);
            reader.ExpectObject(DriverFields);

            var name = reader.RequiredString("name");
            if (!IsIdentifier(name))
            {
                throw reader.Error("name", $"expected letters, digits, '.', '_' or '-'; got \"{name}\"");
            }

            var isolation = IsolationModel.Process;
            var isolationText = reader.OptionalString("isolation");
            if (isolationText is not null && !IsolationModels.TryParse(isolationText, out isolation))
            {
                throw reader.Error("isolation", $"expected one of \"in-kernel\", \"shared-host\", \"process\"; got \"{isolationText}\"");
            }

            var devices = reader.OptionalArray("devices", (element, path) => ReadDevice(source, path, element));
            var attachTo = reader.OptionalArray("attachTo", (element, path) => ReadDeviceName(source, path, element));
            if (devices.Count == 0 && attachTo.Count == 0)
            {
                throw reader.Error("devices", "a driver declares the devices it creates (\"devices\") or, for a filter, the devices it attaches above (\"attachTo\"); this one has neither");
            }

            if (devices.Count > 0 && attachTo.Count > 0)
            {
                throw reader.Error("attachTo", "a driver is a function driver (\"devices\") or a filter (\"attachTo\"), not both");
            }

            Transport? transport = reader.OptionalString("transport") switch
            {
                null => null,
                "pipe" => Transport.Pipe,
                "ring" => Transport.Ring,
                var other => throw reader.Error("transport", $"expected one of \"pipe\", \"ring\"; got \"{other}\""),
            };

            var hostGroup = reader.OptionalString("hostGroup") ?? "shared";
            if (!IsIdentifier(hostGroup))
            {
                throw reader.Error("hostGroup", $"expected letters, digits, '.', '_' or '-'; got \"{hostGroup}\"");
            }

            return new DriverManifest
            {
                Name = name,
                Assembly = reader.RequiredString("assembly"),
                Type = reader.OptionalString("type"),
                Isolation = isolation,
                Transport = transport,
                HostGroup = hostGroup,
                Parameters = reader.Parameters("parameters"),
                Devices = devices,
                AttachTo = attachTo,
                Limits = ReadLimits(reader),
                Recovery = ReadRecovery(reader),
                Source = source,
            };
        }
    }

    /// <summary>The full path of the driver assembly: beside the manifest first, then in the
    /// application's directory.</summary>
    public static string ResolveAssemblyPath(DriverManifest manifest)
    {
        if (Path.IsPathRooted(manifest.Assembly))
        {
            return manifest.Assembly;
        }

        if (File.Exists(manifest.Source))
        {
            var besideManifest = Path.Combine(Path.GetDirectoryName(manifest.Source)!, manifest.Assembly);
            if (File.Exists(besideManifest))
            {
                return Path.GetFullPath(besideManifest);
            }
        }

        return Path.Combine(AppContext.BaseDirectory, manifest.Assembly);
    }

    private static DeviceManifest ReadDevice(string source, string path, JsonElement element)
    {
        var reader = new FieldReader(source, path, element);
        reader.ExpectObject(DeviceFields);
        var typeText = reader.OptionalString("type") ?? "unknown";
        var type = typeText switch
        {
            "null" => DeviceType.Null,
            "disk" => DeviceType.Disk,
            "network" => DeviceType.Network,
            "serial" => DeviceType.Serial,
            "unknown" => DeviceType.Unknown,
            _ => throw reader.Error("type", $"expected one of \"null\", \"disk\", \"network\", \"serial\", \"unknown\"; got \"{typeText}\""),
        };

        var name = reader.RequiredString("name");
        if (!name.StartsWith(@"\Device\", StringComparison.OrdinalIgnoreCase) || name.Length <= 8 || name.IndexOf('\\', 8) >= 0)
        {
            throw reader.Error("name", $"expected a device name like \"\\\\Device\\\\Disk0\"; got \"{name}\"");
        }

        return new DeviceManifest
        {
            Name = name,
            Type = type,
            Links = reader.OptionalArray("links", (link, linkPath) =>
            {
                var text = link.ValueKind == JsonValueKind.String ? link.GetString()! : throw new ManifestException(source, linkPath, $"expected a string; got {Describe(link)}");
                return text.StartsWith('\\') && text.Length > 1
                    ? text
                    : throw new ManifestException(source, linkPath, $"expected a namespace path like \"\\\\??\\\\Disk0\"; got \"{text}\"");
            }),
            Parameters = reader.Parameters("parameters"),
            Hardware = ReadHardware(reader),
        };
    }

    private static HardwareManifest? ReadHardware(FieldReader device)
    {
        if (!device.TryGet("hardware", out var element))
        {
            return null;
        }

        var reader = new FieldReader(device.Source, $"{device.Path}.hardware", element);
        reader.ExpectObject(HardwareFields);
        var kind = reader.RequiredString("kind");
        if (kind is not ("block" or "nic"))
        {
            throw reader.Error("kind", $"expected \"block\" or \"nic\"; got \"{kind}\"");
        }

        var defaults = new HardwareManifest { Kind = kind };
        var capacityMb = reader.OptionalPositiveInt("capacityMb");
        if (capacityMb > 1024)
        {
            throw reader.Error("capacityMb", $"at most 1024 (the media is held in memory); got {capacityMb}");
        }

        var windowKb = reader.OptionalPositiveInt("dmaWindowKb");
        if (windowKb is { } kb && (kb % 4 != 0 || kb > 64 * 1024))
        {
            throw reader.Error("dmaWindowKb", $"expected a multiple of 4 (whole 4 KiB pages) up to 65536; got {kb}");
        }

        var peer = reader.OptionalString("peer");
        if (peer is not null && kind != "nic")
        {
            throw reader.Error("peer", "only a NIC has a peer");
        }

        if (kind == "nic" && capacityMb is not null)
        {
            throw reader.Error("capacityMb", "only a block device has a capacity");
        }

        return defaults with
        {
            CapacityBytes = capacityMb * (1 << 20) ?? defaults.CapacityBytes,
            DmaWindowBytes = windowKb * 1024 ?? defaults.DmaWindowBytes,
            Peer = peer,
        };
    }

    private static string ReadDeviceName(string source, string path, JsonElement element) =>
        element.ValueKind == JsonValueKind.String && element.GetString() is { Length: > 0 } name && name.StartsWith('\\')
            ? name
            : throw new ManifestException(source, path, $"expected a device name like \"\\\\Device\\\\Disk0\"; got {Describe(element)}");

    private static DriverLimits ReadLimits(FieldReader driver)
    {
        if (!driver.TryGet("limits", out var element))
        {
            return new DriverLimits();
        }

        var reader = new FieldReader(driver.Source, $"{driver.Path}.limits", element);
        reader.ExpectObject(LimitFields);
        var timeoutMs = reader.OptionalPositiveInt("requestTimeoutMs");
        var memoryMb = reader.OptionalPositiveInt("memoryMb");
        var handles = reader.OptionalPositiveInt("handles");
        return new DriverLimits
        {
            Handles = handles,
            RequestTimeout = timeoutMs is null ? null : TimeSpan.FromMilliseconds(timeoutMs.Value),
            MemoryBytes = memoryMb * 1024L * 1024L,
            Critical = reader.OptionalArray("critical", (e, p) => ReadMajor(driver.Source, p, e)),
        };
    }

    private static RecoveryPolicy ReadRecovery(FieldReader driver)
    {
        if (!driver.TryGet("recovery", out var element))
        {
            return new RecoveryPolicy();
        }

        var reader = new FieldReader(driver.Source, $"{driver.Path}.recovery", element);
        reader.ExpectObject(RecoveryFields);
        var defaults = new RecoveryPolicy();
        var inFlightText = reader.OptionalString("inFlight");
        var inFlight = inFlightText switch
        {
            null => defaults.InFlight,
            "fail" => InFlightPolicy.Fail,
            "retry" => InFlightPolicy.Retry,
            _ => throw reader.Error("inFlight", $"expected \"fail\" or \"retry\"; got \"{inFlightText}\""),
        };
        var idempotent = reader.TryGet("idempotent", out _)
            ? reader.OptionalArray("idempotent", (e, p) => ReadMajor(driver.Source, p, e))
            : defaults.Idempotent;
        var policy = new RecoveryPolicy
        {
            Restart = reader.OptionalBool("restart") ?? defaults.Restart,
            InFlight = inFlight,
            Idempotent = idempotent,
            MaxFailures = reader.OptionalPositiveInt("maxFailures") ?? defaults.MaxFailures,
            FailureWindow = Milliseconds(reader.OptionalPositiveInt("failureWindowMs")) ?? defaults.FailureWindow,
            QuietPeriod = Milliseconds(reader.OptionalPositiveInt("quietPeriodMs")) ?? defaults.QuietPeriod,
            BackoffBase = Milliseconds(reader.OptionalPositiveInt("backoffBaseMs")) ?? defaults.BackoffBase,
            BackoffMax = Milliseconds(reader.OptionalPositiveInt("backoffMaxMs")) ?? defaults.BackoffMax,
            BootCritical = reader.OptionalBool("bootCritical") ?? defaults.BootCritical,
            OnIommuFault = reader.OptionalString("onIommuFault") switch
            {
                null or "restart" => IommuFaultPolicy.Restart,
                "quarantine" => IommuFaultPolicy.Quarantine,
                var other => throw reader.Error("onIommuFault", $"expected \"restart\" or \"quarantine\"; got \"{other}\""),
            },
        };
        return policy.BackoffMax < policy.BackoffBase
            ? throw reader.Error("backoffMaxMs", $"must be at least backoffBaseMs ({policy.BackoffBase.TotalMilliseconds} ms)")
            : policy;
    }

    private static TimeSpan? Milliseconds(int? value) => value is null ? null : TimeSpan.FromMilliseconds(value.Value);

    private static MajorFunction ReadMajor(string source, string path, JsonElement element) =>
        element.ValueKind == JsonValueKind.String && MajorNames.TryGetValue(element.GetString()!, out var major)
            ? major
            : throw new ManifestException(source, path, $"expected one of {string.Join(", ", MajorNames.Keys)}; got {Describe(element)}");

    private static bool IsIdentifier(string text) =>
        text.Length is > 0 and <= 64 && text.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');

    private static string FirstSentence(string message)
    {
        var end = message.IndexOf(". ", StringComparison.Ordinal);
        return end < 0 ? message : message[..end];
    }

    internal static string Describe(JsonElement element) => element.ValueKind switch
    {
        JsonValueKind.String => $"the string \"{element.GetString()}\"",
        JsonValueKind.Number => $"the number {element.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => $"{element.GetRawText()}",
        JsonValueKind.Null => "null",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => element.ValueKind.ToString(),
    };

    /// <summary>Reads the fields of one JSON object, naming them by path in every error.</summary>
    private readonly struct FieldReader(string source, string path, JsonElement element)
    {
        public string Source => source;

        public string Path => path;

        public ManifestException Error(string field, string problem) => new(source, $"{path}.{field}", problem);

        public void ExpectObject(string[] knownFields)
        {
            if (element.ValueKind != JsonValueKind.Object)
            {
                throw new ManifestException(source, path, $"expected an object; got {Describe(element)}");
            }

            foreach (var property in element.EnumerateObject())
            {
                if (Array.IndexOf(knownFields, property.Name) < 0)
                {
                    throw Error(property.Name, $"unknown field; expected one of {string.Join(", ", knownFields)}");
                }
            }
        }

        public bool TryGet(string field, out JsonElement value)
        {
            if (element.TryGetProperty(field, out value) && value.ValueKind != JsonValueKind.Null)
            {
                return true;
            }

            value = default;
            return false;
        }

        public string RequiredString(string field) =>
            OptionalString(field) ?? throw Error(field, "required, and missing");

        public string? OptionalString(string field)
        {
            if (!TryGet(field, out var value))
            {
                return null;
            }

            return value.ValueKind == JsonValueKind.String && value.GetString() is { Length: > 0 } text
                ? text
                : throw Error(field, $"expected a non-empty string; got {Describe(value)}");
        }

        public bool? OptionalBool(string field)
        {
            if (!TryGet(field, out var value))
            {
                return null;
            }

            return value.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Error(field, $"expected true or false; got {Describe(value)}"),
            };
        }

        public int? OptionalPositiveInt(string field)
        {
            if (!TryGet(field, out var value))
            {
                return null;
            }

            return value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out var number) && number > 0
                ? number
                : throw Error(field, $"expected a positive whole number; got {Describe(value)}");
        }

        public List<T> OptionalArray<T>(string field, Func<JsonElement, string, T> read)
        {
            if (!TryGet(field, out var value))
            {
                return [];
            }

            if (value.ValueKind != JsonValueKind.Array)
            {
                throw Error(field, $"expected an array; got {Describe(value)}");
            }

            var items = new List<T>();
            var index = 0;
            foreach (var item in value.EnumerateArray())
            {
                items.Add(read(item, $"{path}.{field}[{index++}]"));
            }

            return items;
        }

        /// <summary>A string-to-string map; numbers and booleans are accepted and kept as text.</summary>
        public Dictionary<string, string> Parameters(string field)
        {
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            if (!TryGet(field, out var value))
            {
                return result;
            }

            if (value.ValueKind != JsonValueKind.Object)
            {
                throw Error(field, $"expected an object of names to values; got {Describe(value)}");
            }

            foreach (var property in value.EnumerateObject())
            {
                result[property.Name] = property.Value.ValueKind switch
                {
                    JsonValueKind.String => property.Value.GetString()!,
                    JsonValueKind.Number => property.Value.GetRawText(),
                    JsonValueKind.True => "true",
                    JsonValueKind.False => "false",
                    _ => throw new ManifestException(source, $"{path}.{field}.{property.Name}", $"expected a string, number or boolean; got {Describe(property.Value)}"),
                };
            }

            return result;
        }
    }
}
