using System.Diagnostics;
using System.Globalization;

namespace DriverIsolation.Tests;

/// <summary>
/// <c>drviso serve</c> with a boot-critical driver whose every load crashes, managed from other
/// drviso processes over the control pipe: the kernel comes up in safe mode, the quarantined
/// driver is listed and can be re-enabled, other drivers can be broken by hand, and SIGTERM
/// stops it all.
/// </summary>
[Collection("processes")]
public sealed class ServeCommandTests : IDisposable
{
    private readonly string _manifests = Directory.CreateTempSubdirectory("drviso-serve-").FullName;

    public void Dispose() => Directory.Delete(_manifests, recursive: true);

    [Fact]
    public async Task Serve_SafeModeThenQuarantineListEnableAndInject_AllOverTheControlPipe()
    {
        File.Copy(Path.Combine(AppContext.BaseDirectory, "test-manifests", "BootCrash.json"), Path.Combine(_manifests, "BootCrash.json"));
        File.Copy(Path.Combine(AppContext.BaseDirectory, "manifests", "Null.json"), Path.Combine(_manifests, "Null.json"));
        using var serve = Process.Start(Drviso.StartInfo("serve", "--manifests", _manifests, "--nbd", "off"))!;
        try
        {
            var ready = await Drviso.ReadUntilAsync(serve, "serving: kernel PID ").Bounded();
            var pid = int.Parse(ready["serving: kernel PID ".Length..ready.IndexOf(';', StringComparison.Ordinal)], CultureInfo.InvariantCulture);
            var kernel = pid.ToString(CultureInfo.InvariantCulture);

            // Keep draining its output so a chatty kernel never blocks on a full pipe.
            var stdout = serve.StandardOutput.ReadToEndAsync();
            var stderr = serve.StandardError.ReadToEndAsync();

            var drivers = await Drviso.RunAsync("drivers", "--kernel", kernel);
            Assert.Equal(0, drivers.ExitCode);
            Assert.Contains("SAFE MODE: BootCrash is quarantined", drivers.Output, StringComparison.Ordinal);
            Assert.Matches(@"Null\s+│ Running", drivers.Output);

            var quarantined = await Drviso.RunAsync("quarantine", "list", "--kernel", kernel);
            Assert.Equal(0, quarantined.ExitCode);
            Assert.Matches(@"BootCrash\s+│ Quarantined", quarantined.Output);
            Assert.DoesNotContain("Null", quarantined.Output, StringComparison.Ordinal);

            var enabled = await Drviso.RunAsync("quarantine", "enable", "BootCrash", "--kernel", kernel);
            Assert.Equal(0, enabled.ExitCode);
            Assert.Contains("BootCrash re-enabled", enabled.Output, StringComparison.Ordinal);

            var notQuarantined = await Drviso.RunAsync("quarantine", "enable", "Null", "--kernel", kernel);
            Assert.Equal(1, notQuarantined.ExitCode);
            Assert.Contains("drviso: Null is Running, not quarantined", notQuarantined.Output, StringComparison.Ordinal);

            var injected = await Drviso.RunAsync("inject", "Null", "kill", "--kernel", kernel);
            Assert.Equal(0, injected.ExitCode);
            var unknown = await Drviso.RunAsync("inject", "Nope", "kill", "--kernel", kernel);
            Assert.Equal(1, unknown.ExitCode);
            Assert.Contains("drviso: no driver named Nope", unknown.Output, StringComparison.Ordinal);

            using (var term = Process.Start("kill", ["-TERM", kernel]))
            {
                await term.WaitForExitAsync().Bounded();
            }

            await serve.WaitForExitAsync().Bounded();
            Assert.Equal(0, serve.ExitCode);
            await Task.WhenAll(stdout, stderr).Bounded();
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
    public async Task ControlCommands_NoKernelServing_SayHowToStartOne()
    {
        var result = await Drviso.RunAsync("drivers", "--kernel", "999999");

        Assert.Equal(1, result.ExitCode);
        Assert.Contains("no kernel answers on PID 999999's control pipe", result.Output, StringComparison.Ordinal);
    }
}
