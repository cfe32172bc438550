using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using DriverIsolation.Cli.Fuzz;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso fuzz</c>: feed a real kernel messages drawn at random by a hostile host
/// process, and count kernel faults (which must be zero).</summary>
internal static class FuzzCommand
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static Command Create()
    {
        var inputs = new Option<long>("--inputs") { Description = "How many host messages to feed the kernel", DefaultValueFactory = _ => 100_000 };
        inputs.Validators.Add(r =>
        {
            if (r.GetValue(inputs) is < 1 or > 1_000_000_000)
            {
                r.AddError("--inputs must be between 1 and 1000000000");
            }
        });
        var seed = new Option<int>("--seed") { Description = "Seed of the fuzz host's sessions and of the clients", DefaultValueFactory = _ => 1 };
        var json = new Option<FileInfo?>("--json") { Description = "Also write the report as JSON to this file" };
        var verbose = new Option<bool>("--verbose") { Description = "Show the kernel's log" };
        var command = new Command("fuzz", "Feed the kernel random and hostile messages from a driver host; report kernel faults (must be 0)")
        {
            inputs, seed, json, verbose,
        };
        command.SetAction((parse, _) => RunAsync(parse.GetValue(inputs), parse.GetValue(seed), parse.GetValue(json), parse.GetValue(verbose)));
        return command;
    }

    private static async Task<int> RunAsync(long inputs, int seed, FileInfo? json, bool verbose)
    {
        using var loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o => o.SingleLine = true)
            .SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.None));
        var options = new KernelOptions
        {
            HostPath = Path.Combine(AppContext.BaseDirectory, "fuzzhost.dll"),
            WarmPoolSize = 0,
            // The limits on floods have their own tests; here they would end every session early.
            MaxRefusalsPerSecond = int.MaxValue,
            MaxLogLinesPerSecond = int.MaxValue,
        };
        await using var kernel = new Microkernel(options, loggerFactory);
        await kernel.StartAsync(FuzzRun.Manifests(seed)).ConfigureAwait(false);
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"[bold]drviso fuzz[/]: {inputs:N0} inputs, seed {seed}, kernel PID {Microkernel.ProcessId}; \\Device\\Fuzz served by fuzzhost, VBlock and Null in the kernel as controls"));
        var report = await new FuzzRun(inputs, seed, line => AnsiConsole.WriteLine(line)).RunAsync(kernel).ConfigureAwait(false);

        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"{report.Inputs:N0} inputs in {report.Seconds:F1} s ({report.Inputs / Math.Max(report.Seconds, 0.001):N0}/s) over {report.Sessions} host sessions; " +
            $"{report.Violations:N0} protocol violations (host killed), {report.CompletionsRefused:N0} completions refused, {report.IommuFaults:N0} IOMMU faults."));
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"\\Device\\Fuzz: {report.FuzzRequests:N0} requests ended: {string.Join(", ", report.FuzzRequestsByStatus.OrderByDescending(s => s.Value).Take(8).Select(s => $"{s.Key} {s.Value:N0}"))}."));
        var table = new Table().Border(TableBorder.Rounded).AddColumn("Protocol violation").AddColumn(new TableColumn("Count").RightAligned());
        foreach (var (reason, count) in report.ViolationsByReason.OrderByDescending(v => v.Value).Take(15))
        {
            table.AddRow(reason.EscapeMarkup(), count.ToString("N0", CultureInfo.InvariantCulture));
        }

        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture, $"Control: {report.ControlOperations:N0} verified VBlock write/read + Null read rounds."));
        var colour = report.KernelFaults.Count == 0 ? "green" : "red";
        AnsiConsole.MarkupLine($"[{colour}]Kernel faults: {report.KernelFaults.Count}[/]");
        foreach (var fault in report.KernelFaults.Take(20))
        {
            AnsiConsole.MarkupLine($"[red]fault:[/] {fault.EscapeMarkup()}");
        }

        if (json is not null)
        {
            await File.WriteAllTextAsync(json.FullName, JsonSerializer.Serialize(report, Indented)).ConfigureAwait(false);
            AnsiConsole.MarkupLine($"Report written to {json.FullName.EscapeMarkup()}");
        }

        return report.KernelFaults.Count == 0 ? 0 : 1;
    }
}
