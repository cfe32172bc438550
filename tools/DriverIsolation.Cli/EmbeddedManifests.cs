using DriverIsolation.Kernel;

namespace DriverIsolation.Cli;

/// <summary>The sample drivers' manifests, compiled into drviso so the demo needs no files.</summary>
internal static class EmbeddedManifests
{
    public static readonly string[] SampleNames = ["Null", "RamDisk", "Echo", "XorFilter", "VBlock", "VNic"];

    /// <summary>Sample drivers that scenarios name but the demo and serve do not boot.</summary>
    public static readonly string[] ScenarioNames = ["Sensor"];

    public static IReadOnlyList<DriverManifest> Samples() => [.. SampleNames.Select(Load)];

    public static DriverManifest Load(string name)
    {
        var resource = $"manifests/{name}.json";
        using var stream = typeof(EmbeddedManifests).Assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"drviso was built without {resource}");
        using var reader = new StreamReader(stream);
        return ManifestLoader.Parse(reader.ReadToEnd(), $"embedded:{name}");
    }
}
