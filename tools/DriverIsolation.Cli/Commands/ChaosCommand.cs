using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using DriverIsolation.Cli.Chaos;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso chaos</c>: the sample devices under load while random driver hosts are
/// killed; prints and writes what was issued, completed, lost, duplicated and verified, and exits
/// non-zero if an invariant broke.</summary>
internal static class ChaosCommand
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static Command Create()
    {
        var duration = DurationOption("--duration", "How long to run (e.g. 60s)", "60s");
        var killEvery = DurationOption("--kill-every", "How often to SIGKILL a random driver host (e.g. 1s)", "1s");
        var seed = new Option<int>("--seed") { Description = "Seed of the workload and of the victims", DefaultValueFactory = _ => 1 };
        var json = new Option<FileInfo?>("--json") { Description = "Also write the report as JSON to this file" };
        var verbose = new Option<bool>("--verbose") { Description = "Show the kernel's log" };
        var trace = new Option<FileInfo?>("--trace") { Description = "Write a Chrome / Perfetto trace of every IRP, kill and restart to this file" };
        var command = new Command("chaos", "Run a verified mixed workload while killing driver hosts; report lost, duplicated and recovery times")
        {
            duration, killEvery, seed, json, verbose, trace,
        };
        command.SetAction((parse, _) => RunAsync(
            Parse(parse.GetValue(duration)!), Parse(parse.GetValue(killEvery)!), parse.GetValue(seed), parse.GetValue(json), parse.GetValue(verbose), parse.GetValue(trace)));
        return command;
    }

    private static Option<string> DurationOption(string name, string description, string fallback)
    {
        var option = new Option<string>(name) { Description = description, DefaultValueFactory = _ => fallback };
        option.Validators.Add(r =>
        {
            if (!Durations.TryParse(r.GetValue(option), out _))
            {
                r.AddError($"{name}: expected a duration like 500ms, 60s or 2m; got \"{r.GetValue(option)}\"");
            }
        });
        return option;
    }

    private static TimeSpan Parse(string text) => Durations.TryParse(text, out var value) ? value : throw new ArgumentException(text);

    private static async Task<int> RunAsync(TimeSpan duration, TimeSpan killEvery, int seed, FileInfo? json, bool verbose, FileInfo? traceFile)
    {
        using var loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o => o.SingleLine = true)
            .SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.Error));
        var backingFile = Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), $"drviso-chaos-{Environment.ProcessId}-RamDisk0");
        try
        {
            await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 2 }, loggerFactory);
            var trace = traceFile is null ? null : new TraceRecorder();
            kernel.Trace = trace;
            await kernel.StartAsync(Manifests(backingFile), IsolationModel.Process).ConfigureAwait(false);
            AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
                $"[bold]drviso chaos[/]: {duration.TotalSeconds:F0} s, a SIGKILL every {killEvery.TotalMilliseconds:F0} ms, seed {seed}, kernel PID {Microkernel.ProcessId}"));
            var report = await new ChaosRun(kernel, duration, killEvery, seed).RunAsync(verbose ? line => AnsiConsole.WriteLine(line) : null).ConfigureAwait(false);
            Print(report);
            if (json is not null)
            {
                await File.WriteAllTextAsync(json.FullName, JsonSerializer.Serialize(report, Indented)).ConfigureAwait(false);
                AnsiConsole.MarkupLine($"Report written to {json.FullName.EscapeMarkup()}");
            }

            if (trace is not null && traceFile is not null)
            {
                kernel.Trace = null;
                await trace.WriteAsync(traceFile.FullName).ConfigureAwait(false);
                AnsiConsole.MarkupLine($"Trace written to {traceFile.FullName.EscapeMarkup()}{(trace.Dropped > 0 ? $" ({trace.Dropped} events dropped)" : "")}");
            }

            return report.InvariantsHold ? 0 : 1;
        }
        finally
        {
            File.Delete(backingFile);
        }
    }

    /// <summary>The samples, set up to survive: idempotent requests are retried on the new
    /// instance, the disk's media outlives its driver, the failure limit is out of reach and an
    /// instance counts as healthy after 100 ms, so every kill is answered by an immediate restart
    /// (this run measures recovery; quarantine and backoff have their own tests).</summary>
    private static IReadOnlyList<DriverManifest> Manifests(string backingFile)
    {
        var survive = new RecoveryPolicy { MaxFailures = 100_000, QuietPeriod = TimeSpan.FromMilliseconds(100) };
        var retry = survive with { InFlight = InFlightPolicy.Retry };
        return
        [
            EmbeddedManifests.Load("Null") with { Recovery = retry },
            WithBackingFile(EmbeddedManifests.Load("RamDisk"), backingFile) with { Recovery = retry },
            EmbeddedManifests.Load("XorFilter") with { Recovery = retry },
            EmbeddedManifests.Load("Echo") with { Recovery = survive },
        ];
    }

    private static DriverManifest WithBackingFile(DriverManifest manifest, string path)
    {
        var device = manifest.Devices[0];
        return manifest with { Devices = [device with { Parameters = new Dictionary<string, string>(device.Parameters) { ["backingFile"] = path } }] };
    }

    private static void Print(ChaosReport report)
    {
        var table = new Table().Border(TableBorder.Rounded).AddColumn("measure").AddColumn(new TableColumn("value").RightAligned());
        table.AddRow("requests issued", report.Issued.ToString(CultureInfo.InvariantCulture));
        foreach (var (status, count) in report.Completed)
        {
            table.AddRow($"  completed {status}", count.ToString(CultureInfo.InvariantCulture));
        }

        table.AddRow(Mark("lost", report.Lost == 0), report.Lost.ToString(CultureInfo.InvariantCulture));
        table.AddRow(Mark("completed twice", report.Duplicated == 0), report.Duplicated.ToString(CultureInfo.InvariantCulture));
        table.AddRow("hosts killed (SIGKILL)", report.Kills.ToString(CultureInfo.InvariantCulture));
        table.AddRow("driver restarts", report.Restarts.ToString(CultureInfo.InvariantCulture));
        table.AddRow("recovery p50 / p99 (ms)", string.Create(CultureInfo.InvariantCulture, $"{report.RecoveryP50Ms:F2} / {report.RecoveryP99Ms:F2}"));
        table.AddRow(Mark("data verified", report.DataVerified), string.Create(CultureInfo.InvariantCulture, $"{report.DataVerified} ({report.VerifiedBlocks} blocks, {report.VerifiedMessages} messages)"));
        table.AddRow(Mark("kernel alive", report.KernelAlive), report.KernelAlive.ToString());
        AnsiConsole.Write(table);
        foreach (var problem in report.Problems)
        {
            AnsiConsole.MarkupLine($"[red]problem:[/] {problem.EscapeMarkup()}");
        }
    }

    private static string Mark(string label, bool ok) => ok ? label : $"[red]{label}[/]";
}
