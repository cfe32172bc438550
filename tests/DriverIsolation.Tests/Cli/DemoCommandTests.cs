using System.Text.RegularExpressions;

namespace DriverIsolation.Tests;

/// <summary><c>drviso demo</c>, the README's main job, run as a user runs it: every sample
/// driver serves verified data, the simulated disk and NICs through isolated drivers with the
/// IOMMU on, and the IOMMU reports no faults.</summary>
[Collection("processes")]
public sealed class DemoCommandTests
{
    [Theory]
    [InlineData("process", "strict")]
    [InlineData("shared-host", "lazy")]
    public async Task Demo_ServesEveryDevice_WithNoIommuFaults(string isolation, string iommu)
    {
        var (exitCode, printed) = await Drviso.RunAsync("demo", "--requests", "40", "--isolation", isolation, "--iommu", iommu);

        // The console wraps long lines at its width: compare with every run of spaces as one.
        var output = Regex.Replace(printed, @"\s+", " ");

        Assert.True(exitCode == 0, output);
        Assert.Contains($"isolation {isolation}, IOMMU {iommu}", output, StringComparison.Ordinal);
        Assert.Contains("Booted 6 drivers", output, StringComparison.Ordinal);
        Assert.Contains("20 echo messages, 20 VBlock transfers, 20 frames between the NICs.", output, StringComparison.Ordinal);
        Assert.Contains(@"\Device\VBlock0 (block, requester 00:01.0, bound to VBlock)", output, StringComparison.Ordinal);
        Assert.Matches($@"IOMMU {iommu}: 0 faults, [1-9]\d* translations", output);
        Assert.Contains("kernel memory intact.", output, StringComparison.Ordinal);
        Assert.Contains("0 IRPs outstanding", output, StringComparison.Ordinal);
        Assert.DoesNotContain("problem:", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Demo_RefusesAnUnknownIommuMode()
    {
        var (exitCode, output) = await Drviso.RunAsync("demo", "--iommu", "sometimes");

        Assert.NotEqual(0, exitCode);
        Assert.Contains("sometimes", output, StringComparison.Ordinal);
    }
}
