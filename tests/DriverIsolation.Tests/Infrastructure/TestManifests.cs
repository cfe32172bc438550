using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>The sample drivers' manifests as the build copies them beside the tests, and the
/// misbehaving test drivers' manifests.</summary>
internal static class TestManifests
{
    public static DriverManifest Sample(string name) =>
        ManifestLoader.LoadFile(Path.Combine(AppContext.BaseDirectory, "manifests", $"{name}.json"));

    public static DriverManifest Test(string name) =>
        ManifestLoader.LoadFile(Path.Combine(AppContext.BaseDirectory, "test-manifests", $"{name}.json"));

    public static IReadOnlyList<DriverManifest> Samples() =>
        [Sample("Null"), Sample("RamDisk"), Sample("Echo"), Sample("XorFilter")];
}
