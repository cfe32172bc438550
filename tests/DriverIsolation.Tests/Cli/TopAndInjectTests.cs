using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace DriverIsolation.Tests;

/// <summary>
/// A student's session against <c>drviso serve --load</c>: <c>drviso top</c> shows the drivers,
/// their host PIDs and the IRPs they serve; <c>drviso inject</c> arms a wild DMA in the block
/// driver (the IOMMU stops it, the watchdog restarts the driver, top counts both) and an
/// unhandled exception in the null driver (its host dies and comes back); SIGTERM writes the
/// serve's trace, with the hosts' own spans and the IOMMU fault in it.
/// </summary>
[Collection("processes")]
public sealed class TopAndInjectTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("drviso-top-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task Top_ShowsTheLoad_InjectedFaults_AreContainedAndCounted_AndServeWritesItsTrace()
    {
        var manifests = Directory.CreateDirectory(Path.Combine(_dir, "manifests")).FullName;
        foreach (var name in new[] { "Null", "VBlock" })
        {
            File.Copy(Path.Combine(AppContext.BaseDirectory, "manifests", $"{name}.json"), Path.Combine(manifests, $"{name}.json"));
        }

        var trace = Path.Combine(_dir, "serve.json");
        using var serve = Process.Start(Drviso.StartInfo("serve", "--manifests", manifests, "--nbd", "off", "--load", "50", "--trace", trace))!;
        try
        {
            var ready = await Drviso.ReadUntilAsync(serve, "serving: kernel PID ").Bounded();
            var kernel = ready["serving: kernel PID ".Length..ready.IndexOf(';', StringComparison.Ordinal)];
            var stdout = serve.StandardOutput.ReadToEndAsync();
            var stderr = serve.StandardError.ReadToEndAsync();

            // Both drivers serve the load: a row each, running, in a process, with IRPs a second.
            var busy = await TopUntilAsync(kernel, o => Rate(o, "Null") > 0 && Rate(o, "VBlock") > 0);
            Assert.Matches(@"Null\s+│ Running\s+│ process\s+│ pipe\s+│\s+\d+", busy);
            Assert.Contains("IOMMU strict, 0 faults", busy, StringComparison.Ordinal);

            var dma = await Drviso.RunAsync("inject", "VBlock", "wild-dma-kernel", "--kernel", kernel);
            Assert.True(dma.ExitCode == 0, dma.Output);
            Assert.Contains("wild-dma-kernel armed in VBlock (process)", dma.Output, StringComparison.Ordinal);
            var contained = await TopUntilAsync(kernel, o => o.Contains("IOMMU strict, 1 faults", StringComparison.Ordinal) && Restarts(o, "VBlock") == 1
                && Row(o, "VBlock")?[2] == "Running");
            var vblock = Row(contained, "VBlock")!;
            Assert.Equal(["Running", "1", "1"], [vblock[2], vblock[10], vblock[11]]);
            Assert.StartsWith("host exited: watchdog:", vblock[12], StringComparison.Ordinal);

            var crash = await Drviso.RunAsync("inject", "Null", "unhandled-exception", "--kernel", kernel);
            Assert.True(crash.ExitCode == 0, crash.Output);
            var restarted = await TopUntilAsync(kernel, o => Restarts(o, "Null") == 1 && Row(o, "Null")?[2] == "Running");
            Assert.StartsWith("host exited: aborted", Row(restarted, "Null")![12], StringComparison.Ordinal);

            // Refused with a reason, and nothing broken by the refusal.
            var noHardware = await Drviso.RunAsync("inject", "Null", "wild-dma-unmapped", "--kernel", kernel);
            Assert.Equal(1, noHardware.ExitCode);
            Assert.Contains("drviso: wild-dma-unmapped programs block hardware, and Null drives none", noHardware.Output, StringComparison.Ordinal);
            var unknown = await Drviso.RunAsync("inject", "Nope", "hang", "--kernel", kernel);
            Assert.Equal(1, unknown.ExitCode);
            Assert.Contains("drviso: no driver named Nope", unknown.Output, StringComparison.Ordinal);

            using (var term = Process.Start("kill", ["-TERM", kernel]))
            {
                await term.WaitForExitAsync().Bounded();
            }

            await serve.WaitForExitAsync().Bounded();
            Assert.Equal(0, serve.ExitCode);
            Assert.Contains($"Trace written to {trace}", await stdout.Bounded(), StringComparison.Ordinal);
            await stderr.Bounded();

            using var json = JsonDocument.Parse(await File.ReadAllTextAsync(trace));
            var events = json.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
            Assert.Contains(events, e => e.GetProperty("ph").GetString() == "i" && e.GetProperty("name").GetString() == "IommuFault VBlock");
            Assert.Contains(events, e => e.GetProperty("ph").GetString() == "i" && e.GetProperty("name").GetString() == "FaultInjected Null");
            Assert.Contains(events, e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("name").GetString() == "VBlock: Read"
                && e.GetProperty("args").GetProperty("timed_by").GetString() == "host");
        }
        finally
        {
            if (!serve.HasExited)
            {
                serve.Kill(entireProcessTree: true);
            }
        }
    }

    [Fact]
    public async Task Top_NoKernelServing_SaysSo()
    {
        var result = await Drviso.RunAsync("top", "--kernel", "999999", "--iterations", "1");

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("no kernel answers on PID 999999's control pipe", result.Output, StringComparison.Ordinal);
    }

    /// <summary>Runs <c>drviso top --iterations 1</c> until its table shows what the test waits
    /// for (each run is one refresh interval of the live kernel), at most a minute.</summary>
    private static async Task<string> TopUntilAsync(string kernel, Func<string, bool> done)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        string output;
        do
        {
            var top = await Drviso.RunAsync("top", "--kernel", kernel, "--iterations", "1", "--interval", "500ms");
            Assert.True(top.ExitCode == 0, top.Output);
            output = top.Output;
            if (done(output))
            {
                return output;
            }
        }
        while (DateTime.UtcNow < deadline);

        Assert.Fail($"drviso top never showed what was expected; last:\n{output}");
        return output;
    }

    // The columns: Driver, State, Isolation, Transport, Host PID, IRP/s, Failed/s, p50, p99, Restarts, IOMMU faults, Last failure.
    private static string[]? Row(string output, string driver) =>
        output.Split('\n').Select(l => l.Split('│').Select(c => c.Trim()).ToArray()).FirstOrDefault(c => c.Length > 12 && c[1] == driver);

    private static int Rate(string output, string driver) =>
        Row(output, driver) is { } row ? int.Parse(row[6], CultureInfo.InvariantCulture) : -1;

    private static int Restarts(string output, string driver) =>
        Row(output, driver) is { } row ? int.Parse(row[10], CultureInfo.InvariantCulture) : -1;
}
