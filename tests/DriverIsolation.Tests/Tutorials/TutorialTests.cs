using System.Text.Json;
using System.Text.RegularExpressions;

namespace DriverIsolation.Tests;

/// <summary>
/// The student tutorials in docs/tutorial stay true: each one's commands (its <c>```sh</c>
/// blocks, and the files it has the student write) run as one bash script, in order, in a fresh
/// directory that looks like the repository, with <c>drviso</c> the one built beside these tests.
/// The script must exit 0, and what the tutorial tells the student to look at must be there.
/// Timings are never asserted: the outputs in the tutorials are examples, these checks are the
/// promises.
/// </summary>
[Collection("processes")]
public sealed class TutorialTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(4);

    [Theory]
    [InlineData("01-follow-one-request.md")]
    [InlineData("02-write-your-first-driver.md")]
    [InlineData("03-break-it.md")]
    [InlineData("04-dma-and-the-iommu.md")]
    [InlineData("05-measure-the-overhead.md")]
    public async Task Tutorial_CommandsRunAsWritten_ExitZeroAndShowWhatTheTextSays(string file)
    {
        var tutorial = TutorialDocument.Parse(file, await File.ReadAllTextAsync(Path.Combine(TutorialSandbox.RepoRoot, "docs", "tutorial", file)));
        Assert.Contains(tutorial.Steps, s => s.Kind == TutorialStepKind.Commands);
        foreach (var tool in new[] { "jq", "setsid" })
        {
            Assert.True(OnPath(tool), $"{file}: {tool} is not installed (Debian: apt-get install {(tool == "jq" ? "jq" : "util-linux")})");
        }

        using var sandbox = new TutorialSandbox(tutorial.Steps.Where(s => s.Kind == TutorialStepKind.Write).Select(s => s.Path!));
        foreach (var quote in tutorial.Quotes)
        {
            var actual = (await File.ReadAllTextAsync(sandbox.PathOf(quote.Path!))).ReplaceLineEndings("\n").TrimEnd('\n') + "\n";
            Assert.True(actual == quote.Body, $"{file}:{quote.Line} quotes {quote.Path}, which now reads:\n{actual}");
        }

        var (exitCode, output) = await sandbox.RunAsync(tutorial.ToScript(), Limit);

        Assert.True(exitCode == 0, $"{file}: the script {(exitCode is null ? $"did not finish within {Limit}" : $"exited {exitCode}")}; its output ends:\n{Tail(output)}");
        var checks = file switch
        {
            "01-follow-one-request.md" => FollowOneRequest(sandbox, output),
            "02-write-your-first-driver.md" => FirstDriver(sandbox, output),
            "03-break-it.md" => BreakIt(sandbox, output),
            "04-dma-and-the-iommu.md" => DmaAndTheIommu(sandbox, output),
            "05-measure-the-overhead.md" => MeasureTheOverhead(sandbox, output),
            _ => throw new ArgumentOutOfRangeException(nameof(file), file, "a tutorial without checks"),
        };
        await checks;
    }

    /// <summary>The trace holds a read of the RAM disk whose slices are on three processes (the
    /// kernel, the filter's host, the disk's host); both pictures are PNGs; the in-kernel trace
    /// has one process.</summary>
    private static async Task FollowOneRequest(TutorialSandbox sandbox, string output)
    {
        using var trace = JsonDocument.Parse(await File.ReadAllTextAsync(sandbox.PathOf("t.json")));
        var slices = trace.RootElement.GetProperty("traceEvents").EnumerateArray().Where(e => e.GetProperty("ph").GetString() == "X").ToList();
        var read = slices.First(e => e.GetProperty("name").GetString() == @"Read \Device\RamDisk0");
        var irp = read.GetProperty("args").GetProperty("irp").GetInt64();
        var journey = slices.Where(e => e.GetProperty("args").TryGetProperty("irp", out var id) && id.GetInt64() == irp).ToList();
        Assert.Equal(7, journey.Count);
        Assert.Equal(3, journey.Select(e => e.GetProperty("pid").GetInt32()).Distinct().Count());
        Assert.Equal(3, journey.Count(e => e.GetProperty("name").GetString() == "driver code"));
        var traceId = read.GetProperty("args").GetProperty("trace_id").GetString();
        Assert.All(journey.Where(e => e.GetProperty("args").TryGetProperty("ended", out _)), stay =>
            Assert.Equal(("host", traceId), (stay.GetProperty("args").GetProperty("timed_by").GetString(), stay.GetProperty("args").GetProperty("trace_id").GetString())));
        Assert.Equal(["passed down", "completed with Success", "completed with Success"],
            journey.Where(e => e.GetProperty("args").TryGetProperty("ended", out _)).OrderBy(e => e.GetProperty("ts").GetDouble())
                .Select(e => e.GetProperty("args").GetProperty("ended").GetString()));

        foreach (var picture in new[] { "timeline.png", "one-read.png" })
        {
            Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, (await File.ReadAllBytesAsync(sandbox.PathOf(picture)))[..4]);
        }

        Assert.Contains("one-read.png (7 events, 7 processes)", output, StringComparison.Ordinal);
        using var inKernel = JsonDocument.Parse(await File.ReadAllTextAsync(sandbox.PathOf("in-kernel.json")));
        Assert.Single(inKernel.RootElement.GetProperty("traceEvents").EnumerateArray(), e => e.GetProperty("name").GetString() == "process_name");
    }

    /// <summary>The driver was built in the sandbox, loaded into a host of its own (its log line
    /// reached the kernel), and the campaign shows the crash taking the system down in-kernel and
    /// nothing but the driver in a process.</summary>
    private static async Task FirstDriver(TutorialSandbox sandbox, string output)
    {
        Assert.True(File.Exists(sandbox.PathOf("drivers/Hello/bin/Release/net10.0/DriverIsolation.Drivers.Hello.dll")));
        Assert.Contains("Hello loaded in process", await File.ReadAllTextAsync(sandbox.PathOf("serve.log")), StringComparison.Ordinal);
        Assert.Matches(@"Hello\s+│ Running\s+│ process", output);

        var summary = await SummaryAsync(sandbox.PathOf("hello-results/report.json"));
        Assert.Equal((0.0, 1.0), (summary["in-kernel/strict/unhandled-exception"].SystemSurvival, summary["in-kernel/strict/unhandled-exception"].InnocentHurt));
        Assert.Equal((1.0, 0.0), (summary["process/strict/unhandled-exception"].SystemSurvival, summary["process/strict/unhandled-exception"].InnocentHurt));
        Assert.All(summary.Values, row => Assert.Equal(0, row.IrpsLost));
    }

    /// <summary>The sensor crash-looped into quarantine at boot (safe mode) and again after it
    /// was enabled; the killed disk driver came back in a new host; chaos kept its invariants;
    /// the campaign's crashes are system crashes in-kernel and contained in a process.</summary>
    private static async Task BreakIt(TutorialSandbox sandbox, string output)
    {
        Assert.Contains("SAFE MODE: Sensor is quarantined", output, StringComparison.Ordinal);
        Assert.Contains("Driver VBlock restarted in host", output, StringComparison.Ordinal);
        Assert.Matches(@"VBlock\s+│ Running\s+│ process\s+│\s+\d+ │\s+1 │", output);
        Assert.Contains("Sensor re-enabled", output, StringComparison.Ordinal);
        Assert.Contains("wild-dma-kernel armed in VBlock (process): it fires on the driver's next request.", output, StringComparison.Ordinal);
        Assert.Contains("IOMMU fault #1 00:01.0 Write 0x1100: OutsideWindow (domain VBlock)", output, StringComparison.Ordinal);
        Assert.Matches(@"│ VBlock\s+│ Running\s+│ process\s+│ pipe\s+│\s+\d+ │\s+\d+ │\s+\d+ │ .* │\s+2 │\s+1 │ host exited: watchdog", output);
        var log = await File.ReadAllTextAsync(sandbox.PathOf("serve.log"));
        Assert.Equal(2, Regex.Count(log, "Driver Sensor quarantined"));

        using (var chaos = JsonDocument.Parse(await File.ReadAllTextAsync(sandbox.PathOf("chaos.json"))))
        {
            Assert.Equal((0, 0, true, true), (chaos.RootElement.GetProperty("lost").GetInt64(), chaos.RootElement.GetProperty("duplicated").GetInt64(),
                chaos.RootElement.GetProperty("data_verified").GetBoolean(), chaos.RootElement.GetProperty("kernel_alive").GetBoolean()));
        }

        var summary = await SummaryAsync(sandbox.PathOf("quick/report.json"));
        foreach (var crash in new[] { "unhandled-exception", "fail-fast" })
        {
            Assert.Equal(0.0, summary[$"in-kernel/strict/{crash}"].SystemSurvival);
            Assert.Equal((1.0, 0.0), (summary[$"process/strict/{crash}"].SystemSurvival, summary[$"process/strict/{crash}"].InnocentHurt));
        }

        Assert.All(summary.Values, row => Assert.Equal(0, row.IrpsLost));
    }

    /// <summary>With the IOMMU off the wild DMA corrupts the kernel (a bug check) or breaks the
    /// other driver's NIC unnoticed; strict, both are IOMMU faults blamed on VBlock, and the
    /// single trial shows the fault record.</summary>
    private static async Task DmaAndTheIommu(TutorialSandbox sandbox, string output)
    {
        using var trials = JsonDocument.Parse(await File.ReadAllTextAsync(sandbox.PathOf("dma/trials.json")));
        var verdicts = trials.RootElement.EnumerateArray().ToDictionary(
            t => $"{t.GetProperty("fault").GetString()}/{t.GetProperty("iommu").GetString()}",
            t => (Survived: t.GetProperty("system_survived").GetBoolean(), Crash: t.GetProperty("crash").GetString(),
                InnocentHurt: t.GetProperty("innocent_devices_hurt").GetInt32(), IommuFaults: t.GetProperty("iommu_faults").GetInt64()));
        Assert.False(verdicts["wild-dma-kernel/off"].Survived);
        Assert.StartsWith("kernel memory corrupted", verdicts["wild-dma-kernel/off"].Crash, StringComparison.Ordinal);
        Assert.Equal((true, 1, 0L), (verdicts["wild-dma-other-driver/off"].Survived, verdicts["wild-dma-other-driver/off"].InnocentHurt, verdicts["wild-dma-other-driver/off"].IommuFaults));
        foreach (var fault in new[] { "wild-dma-kernel", "wild-dma-other-driver" })
        {
            var strict = verdicts[$"{fault}/strict"];
            Assert.Equal((true, 0), (strict.Survived, strict.InnocentHurt));
            Assert.True(strict.IommuFaults >= 1, $"{fault}: no IOMMU fault with the IOMMU strict");
        }

        Assert.Contains("BugCheck: kernel memory corrupted", output, StringComparison.Ordinal);
        Assert.Matches(@"IommuFault \[VBlock\]: #1 \S+ Write 0x1100: OutsideWindow \(domain VBlock\)", output);
        Assert.Contains("DriverRestarted [VBlock]", output, StringComparison.Ordinal);
    }

    /// <summary>Every figure the tutorial explains was measured (none "not built"), and the
    /// ratios came out of the JSON. The values themselves are the machine's business.</summary>
    private static async Task MeasureTheOverhead(TutorialSandbox sandbox, string output)
    {
        using var bench = JsonDocument.Parse(await File.ReadAllTextAsync(sandbox.PathOf("bench.json")));
        var root = bench.RootElement;
        foreach (var path in new[] { "in_kernel", "process", "shared_host", "raw_pipe", "ring", "raw_shm" })
        {
            Assert.Equal(JsonValueKind.Number, root.GetProperty("rtt_p50_us").GetProperty(path).ValueKind);
            Assert.Equal(JsonValueKind.Number, root.GetProperty("rtt_p99_us").GetProperty(path).ValueKind);
        }

        foreach (var depth in new[] { "1", "16", "64" })
        {
            Assert.Equal(JsonValueKind.Number, root.GetProperty("throughput_per_s").GetProperty(depth).ValueKind);
        }

        Assert.Equal(JsonValueKind.Number, root.GetProperty("recovery_p50_ms").ValueKind);
        Assert.Equal(JsonValueKind.Number, root.GetProperty("alloc_bytes_per_irp").ValueKind);
        Assert.Contains("process vs raw pipe (p50):", output, StringComparison.Ordinal);
        Assert.Matches(@"""process_vs_in_kernel"": \d", output);
        Assert.Matches(@"""process_vs_ring"": \d", output);
    }

    /// <summary>A campaign's report.json, a row per "isolation/iommu/fault".</summary>
    private static async Task<Dictionary<string, (double SystemSurvival, double InnocentHurt, long IrpsLost, long IommuFaults)>> SummaryAsync(string reportJson)
    {
        using var report = JsonDocument.Parse(await File.ReadAllTextAsync(reportJson));
        return report.RootElement.GetProperty("summary").EnumerateArray().ToDictionary(
            r => $"{r.GetProperty("isolation").GetString()}/{r.GetProperty("iommu").GetString()}/{r.GetProperty("fault").GetString()}",
            r => (r.GetProperty("system_survival").GetDouble(), r.GetProperty("innocent_devices_hurt").GetDouble(),
                r.GetProperty("irps_lost").GetInt64(), r.GetProperty("iommu_faults").GetInt64()));
    }

    private static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries).Any(d => File.Exists(Path.Combine(d, tool)));

    private static string Tail(string output) => output.Length <= 12_000 ? output : "..." + output[^12_000..];
}
