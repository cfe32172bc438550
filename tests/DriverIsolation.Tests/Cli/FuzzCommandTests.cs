using System.Text.Json;

namespace DriverIsolation.Tests;

/// <summary><c>drviso fuzz</c> with a CI-sized budget: a host process feeds the kernel random and
/// hostile messages; the kernel takes every one, kills the host at each violation, restarts it,
/// and no kernel fault is seen while the in-kernel control devices serve verified data.</summary>
[Collection("processes")]
public sealed class FuzzCommandTests
{
    [Fact]
    public async Task Fuzz_TwentyThousandInputs_NoKernelFault()
    {
        var json = Path.Combine(Path.GetTempPath(), $"drviso-fuzz-{Guid.NewGuid():N}.json");
        try
        {
            var (exitCode, output) = await Drviso.RunAsync("fuzz", "--inputs", "20000", "--seed", "3", "--json", json);

            Assert.True(exitCode == 0, output);
            using var report = JsonDocument.Parse(await File.ReadAllTextAsync(json));
            var root = report.RootElement;
            Assert.True(root.GetProperty("Inputs").GetInt64() >= 20_000);
            Assert.Equal(0, root.GetProperty("KernelFaults").GetArrayLength());
            // The run went through hostile messages and restarts, not around them.
            Assert.True(root.GetProperty("Violations").GetInt64() >= 1, output);
            Assert.True(root.GetProperty("Sessions").GetInt32() >= 2, output);
            Assert.True(root.GetProperty("CompletionsRefused").GetInt64() >= 1, output);
            Assert.True(root.GetProperty("ControlOperations").GetInt64() >= 1, output);
            Assert.True(root.GetProperty("FuzzRequestsByStatus").TryGetProperty("Success", out _), output);
            Assert.Contains("Kernel faults: 0", output, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(json);
        }
    }
}
