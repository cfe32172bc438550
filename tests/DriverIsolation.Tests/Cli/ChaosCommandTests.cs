using System.Text.Json;

namespace DriverIsolation.Tests;

/// <summary><c>drviso chaos</c> as a user runs it: a short run with host kills must keep every
/// invariant, say so in its JSON, and exit 0. (Recovery times are reported, never asserted.)</summary>
[Collection("processes")]
public sealed class ChaosCommandTests : IDisposable
{
    private readonly string _json = Path.Combine(Path.GetTempPath(), $"drviso-chaos-{Guid.NewGuid():N}.json");

    public void Dispose() => File.Delete(_json);

    [Fact]
    public async Task Chaos_ShortRunWithKills_ReportsNothingLostNothingDuplicatedDataVerified()
    {
        var trace = Path.ChangeExtension(_json, ".trace.json");
        var (exitCode, output) = await Drviso.RunAsync("chaos", "--duration", "4s", "--kill-every", "500ms", "--seed", "7", "--json", _json, "--trace", trace);

        Assert.True(exitCode == 0, output);
        using var report = JsonDocument.Parse(await File.ReadAllTextAsync(_json));
        var root = report.RootElement;
        Assert.Equal(0, root.GetProperty("lost").GetInt64());
        Assert.Equal(0, root.GetProperty("duplicated").GetInt64());
        Assert.True(root.GetProperty("data_verified").GetBoolean());
        Assert.True(root.GetProperty("kernel_alive").GetBoolean());
        Assert.InRange(root.GetProperty("kills").GetInt32(), 1, 10);
        Assert.Equal(root.GetProperty("kills").GetInt32(), root.GetProperty("restarts").GetInt32());
        var completed = root.GetProperty("completed").EnumerateObject().Sum(p => p.Value.GetInt64());
        Assert.Equal(root.GetProperty("issued").GetInt64(), completed);
        Assert.True(root.GetProperty("completed").GetProperty("Success").GetInt64() > 0);
        foreach (var field in new[] { "recovery_p50_ms", "recovery_p99_ms" })
        {
            Assert.Equal(JsonValueKind.Number, root.GetProperty(field).ValueKind);
        }

        // The trace shows every kill and every restart as an instant, and the IRPs as slices.
        using (var traced = JsonDocument.Parse(await File.ReadAllTextAsync(trace)))
        {
            var events = traced.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
            var instants = events.Where(e => e.GetProperty("ph").GetString() == "i").Select(e => e.GetProperty("name").GetString()!).ToList();
            Assert.Equal(root.GetProperty("kills").GetInt32(), instants.Count(n => n.StartsWith("HostExited ", StringComparison.Ordinal)));
            Assert.Equal(root.GetProperty("restarts").GetInt32(), instants.Count(n => n.StartsWith("DriverRestarted ", StringComparison.Ordinal)));
            Assert.True(events.Count(e => e.GetProperty("ph").GetString() == "X") > 100);
        }

        File.Delete(trace);
    }

    [Fact]
    public async Task Chaos_BadDuration_FailsWithAClearMessage()
    {
        var (exitCode, output) = await Drviso.RunAsync("chaos", "--duration", "soon");

        Assert.NotEqual(0, exitCode);
        Assert.Contains("--duration: expected a duration like 500ms, 60s or 2m; got \"soon\"", output, StringComparison.Ordinal);
    }
}
