namespace DriverIsolation.Tests;

/// <summary>
/// <c>drviso demo --trace</c> writes a trace of every IRP across the kernel and the hosts, and
/// <c>drviso trace render</c> draws it as PNG and SVG with a row per process; a file that is no
/// trace is refused with a clear error.
/// </summary>
[Collection("processes")]
public sealed class TraceCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("drviso-trace-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task DemoTrace_RendersAsPngAndSvg_WithARowPerProcess()
    {
        var trace = Path.Combine(_dir, "t.json");
        var demo = await Drviso.RunAsync("demo", "--requests", "8", "--trace", trace);
        Assert.True(demo.ExitCode == 0, demo.Output);
        Assert.Contains($"Trace written to {trace}", demo.Output, StringComparison.Ordinal);

        var png = await Drviso.RunAsync("trace", "render", trace, "--out", Path.Combine(_dir, "timeline.png"));
        var svg = await Drviso.RunAsync("trace", "render", trace, "--out", Path.Combine(_dir, "timeline.svg"));

        Assert.True(png.ExitCode == 0, png.Output);
        Assert.True(svg.ExitCode == 0, svg.Output);
        Assert.Contains("7 processes", svg.Output, StringComparison.Ordinal);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, (await File.ReadAllBytesAsync(Path.Combine(_dir, "timeline.png")))[..4]);
        var picture = await File.ReadAllTextAsync(Path.Combine(_dir, "timeline.svg"));
        Assert.Contains("<svg", picture, StringComparison.Ordinal);
        foreach (var row in new[] { "kernel (PID", "host VBlock (PID", "host XorFilter (PID", "host RamDisk (PID" })
        {
            Assert.Contains(row, picture, StringComparison.Ordinal);
        }

        // One Read of the RAM disk under the XOR filter: its slice in the kernel and its three stays in two hosts, each with its driver's routine.
        using var json = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(trace));
        var read = json.RootElement.GetProperty("traceEvents").EnumerateArray()
            .First(e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("name").GetString() == @"Read \Device\RamDisk0");
        var id = read.GetProperty("args").GetProperty("irp").GetInt64().ToString(System.Globalization.CultureInfo.InvariantCulture);
        var one = await Drviso.RunAsync("trace", "render", trace, "--irp", id, "--out", Path.Combine(_dir, "one.svg"));
        Assert.True(one.ExitCode == 0, one.Output);
        Assert.Contains("(7 events, 7 processes)", one.Output, StringComparison.Ordinal);
        var drawn = await File.ReadAllTextAsync(Path.Combine(_dir, "one.svg"));
        Assert.Contains("XorFilter: Read", drawn, StringComparison.Ordinal);
        Assert.Contains("RamDisk: Read", drawn, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Render_AFileThatIsNoTrace_IsRefused()
    {
        var notTrace = Path.Combine(_dir, "no.json");
        await File.WriteAllTextAsync(notTrace, """{ "hello": 1 }""");

        var result = await Drviso.RunAsync("trace", "render", notTrace, "--out", Path.Combine(_dir, "x.png"));

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("no.json is not a trace written by --trace", result.Output, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(_dir, "x.png")));
    }
}
