using System.Text.Json;

namespace DriverIsolation.Tests;

/// <summary><c>drviso bench --quick</c> runs and writes every field its JSON promises. The figures
/// themselves are never asserted: this machine is shared and noisy.</summary>
[Collection("processes")]
public sealed class BenchCommandTests : IDisposable
{
    private readonly string _json = Path.Combine(Path.GetTempPath(), $"drviso-bench-{Guid.NewGuid():N}.json");

    public void Dispose() => File.Delete(_json);

    [Fact]
    public async Task BenchQuick_WritesEveryPromisedField()
    {
        var (exitCode, output) = await Drviso.RunAsync("bench", "--quick", "--json", _json);

        Assert.True(exitCode == 0, output);
        using var report = JsonDocument.Parse(await File.ReadAllTextAsync(_json));
        var root = report.RootElement;
        foreach (var percentile in new[] { "rtt_p50_us", "rtt_p99_us" })
        {
            var paths = root.GetProperty(percentile);
            foreach (var measured in new[] { "raw_pipe", "raw_shm", "in_kernel", "shared_host", "process", "process_inline_dispatch", "ring", "process_run_to_completion", "ring_run_to_completion" })
            {
                Assert.True(paths.GetProperty(measured).GetDouble() > 0, $"{percentile}.{measured}");
            }
        }

        foreach (var field in new[] { "ratio_process_vs_raw_pipe", "ratio_ring_vs_raw_shm", "in_kernel_ns", "in_kernel_loop_ns", "raw_throughput_per_s", "inline_dispatch_throughput_per_s", "raw_shm_throughput_per_s", "recovery_p50_ms", "recovery_unprepared_p50_ms", "ratio_ring_run_to_completion_vs_raw_shm" })
        {
            Assert.True(root.GetProperty(field).GetDouble() > 0, field);
        }

        // Allocations are measured (numbers, not null), and may well be 0.
        foreach (var field in new[] { "alloc_bytes_per_irp", "alloc_bytes_per_irp_host", "alloc_bytes_per_irp_in_kernel" })
        {
            Assert.True(root.GetProperty(field).GetDouble() >= 0, field);
        }

        Assert.Equal(["1", "16", "64"], root.GetProperty("throughput_per_s").EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal));
        Assert.Equal(["1", "16", "64"], root.GetProperty("ring_throughput_per_s").EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal));

        // The block workload ran in every model, every request succeeding and reading back what was written.
        var block = root.GetProperty("block_randrw_iops");
        Assert.Equal(["in-kernel", "process", "process_ring"], block.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal));
        Assert.All(block.EnumerateObject(), p => Assert.True(p.Value.GetDouble() > 0, p.Name));

        var runToCompletion = root.GetProperty("run_to_completion_throughput_per_s");
        Assert.Equal(["pipe", "ring"], runToCompletion.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal));
        Assert.All(runToCompletion.EnumerateObject(), p => Assert.True(p.Value.GetDouble() > 0, p.Name));
    }
}
