using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using DriverIsolation.Cli.Bench;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso bench [--quick] [--json file]</c>: a short measurement of isolation overhead
/// against the raw transport, for users who do not want a full BenchmarkDotNet run.</summary>
internal static class BenchCommand
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static Command Create()
    {
        var quick = new Option<bool>("--quick") { Description = "Fewer requests and kills (about 18 s instead of about 55 s)" };
        var json = new Option<FileInfo?>("--json") { Description = "Also write the results as JSON to this file" };
        var command = new Command("bench", "Measure the IRP round trip per isolation model against the raw pipe under it") { quick, json };
        command.SetAction((parse, _) => RunAsync(parse.GetValue(quick), parse.GetValue(json)));
        return command;
    }

    private static async Task<int> RunAsync(bool quick, FileInfo? json)
    {
        var report = await new QuickBench(quick, step => AnsiConsole.MarkupLine($"[grey]measuring {step.EscapeMarkup()}...[/]")).RunAsync().ConfigureAwait(false);
        var table = new Table().Border(TableBorder.Rounded).AddColumn("path").AddColumn(new TableColumn("p50 µs").RightAligned()).AddColumn(new TableColumn("p99 µs").RightAligned());
        foreach (var (path, p50) in report.RttP50Us)
        {
            table.AddRow(path, Format(p50), Format(report.RttP99Us[path]));
        }

        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"process vs raw pipe (p50): [bold]{report.RatioProcessVsRawPipe:F2}x[/]; in-kernel dispatch p50 {report.InKernelNs:F0} ns (mean in a loop {report.InKernelLoopNs:F0} ns); {report.AllocBytesPerIrp:F0} B allocated per IRP (process, kernel side), {report.AllocBytesPerIrpHost?.ToString("F0", System.Globalization.CultureInfo.InvariantCulture) ?? "?"} B host side, {report.AllocBytesPerIrpInKernel:F0} B in-kernel"));
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"throughput (process) at depth 1 / 16 / 64: {report.ThroughputPerS["1"]:F0} / {report.ThroughputPerS["16"]:F0} / {report.ThroughputPerS["64"]:F0} IRP/s (with inline dispatch in the host: {report.InlineDispatchThroughputPerS:F0}); raw pipe at 64: {report.RawThroughputPerS:F0}/s"));
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"ring transport: process over the ring vs raw shared memory (p50): [bold]{report.RatioRingVsRawShm:F2}x[/]; throughput at depth 1 / 16 / 64: {report.RingThroughputPerS["1"]:F0} / {report.RingThroughputPerS["16"]:F0} / {report.RingThroughputPerS["64"]:F0} IRP/s; raw shared memory at 64: {report.RawShmThroughputPerS:F0}/s"));
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"run to completion (routines on the host's reader, continuations on the kernel's): ring vs raw shared memory (p50) [bold]{report.RatioRunToCompletionVsRawShm:F2}x[/]; throughput at depth 64: pipe {report.RunToCompletionThroughputPerS["pipe"]:F0} IRP/s ({report.RunToCompletionThroughputPerS["pipe"] / report.RawThroughputPerS:F2}x the raw pipe), ring {report.RunToCompletionThroughputPerS["ring"]:F0} IRP/s"));
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"VBlock (IOMMU strict), 4 KiB random reads and writes, 8 in flight: in-kernel {report.BlockRandRwIops["in-kernel"]:F0} / process {report.BlockRandRwIops["process"]:F0} / process over the ring {report.BlockRandRwIops["process_ring"]:F0} requests/s"));
        AnsiConsole.MarkupLine($"recovery (kill -> first IRP served, warm pool) p50: {Format(report.RecoveryP50Ms)} ms; with the driver not loaded ahead in the warm host: {Format(report.RecoveryUnpreparedP50Ms)} ms");
        if (json is not null)
        {
            await File.WriteAllTextAsync(json.FullName, JsonSerializer.Serialize(report, Indented)).ConfigureAwait(false);
            AnsiConsole.MarkupLine($"Results written to {json.FullName.EscapeMarkup()}");
        }

        return 0;
    }

    private static string Format(double? value) => value is { } v ? v.ToString("F2", CultureInfo.InvariantCulture) : "not built";
}
