using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using ScottPlot;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso trace render</c>: draws a trace written by <c>--trace</c> as a timeline (one
/// row per process, IRPs and layer stays as bars, kernel events as markers), PNG or SVG, for when
/// no trace viewer is at hand.</summary>
internal static class TraceCommand
{
    private static readonly Color[] Palette =
    [
        Color.FromHex("#1f77b4"), Color.FromHex("#2ca02c"), Color.FromHex("#ff7f0e"), Color.FromHex("#9467bd"),
        Color.FromHex("#8c564b"), Color.FromHex("#e377c2"), Color.FromHex("#17becf"), Color.FromHex("#bcbd22"),
    ];

    public static Command Create()
    {
        var file = new Argument<FileInfo>("trace") { Description = "A trace written by drviso demo --trace" };
        var output = new Option<FileInfo>("--out") { Description = "The picture to write: .png or .svg", Required = true };
        output.Validators.Add(r =>
        {
            var extension = r.GetValue(output)?.Extension.ToLowerInvariant();
            if (extension is not (".png" or ".svg"))
            {
                r.AddError($"--out: expected a .png or .svg file; got \"{r.GetValue(output)?.Name}\"");
            }
        });
        var from = new Option<double?>("--from") { Description = "Start of the window to draw, ms from the trace's start" };
        var to = new Option<double?>("--to") { Description = "End of the window to draw, ms from the trace's start" };
        var irp = new Option<long?>("--irp") { Description = "Draw only this IRP (its id in the trace): its slice in the kernel and its stays in the hosts" };
        var render = new Command("render", "Draw a trace as a timeline: a row per process, IRPs and layer stays as bars, kernel events as markers")
        {
            file, output, from, to, irp,
        };
        render.SetAction((parse, _) => RenderAsync(parse.GetValue(file)!, parse.GetValue(output)!, parse.GetValue(from), parse.GetValue(to), parse.GetValue(irp)));
        return new Command("trace", "Work with traces written by --trace") { render };
    }

    private static async Task<int> RenderAsync(FileInfo file, FileInfo output, double? from, double? to, long? irp)
    {
        List<TraceEvent> events;
        Dictionary<int, string> names;
        try
        {
            (events, names) = Read(await File.ReadAllTextAsync(file.FullName).ConfigureAwait(false));
        }
        catch (Exception ex) when (ex is IOException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            await Console.Error.WriteLineAsync($"drviso trace render: {file.Name} is not a trace written by --trace: {ex.Message}").ConfigureAwait(false);
            return 2;
        }

        if (irp is { } id)
        {
            events = [.. events.Where(e => e.Irp == id)];
            if (events.Count == 0)
            {
                await Console.Error.WriteLineAsync($"drviso trace render: no IRP {id} in {file.Name}").ConfigureAwait(false);
                return 2;
            }
        }

        var start = from ?? (events.Count == 0 ? 0 : events.Min(e => e.Start));
        var end = to ?? (events.Count == 0 ? 1 : events.Max(e => e.Start + e.Duration));
        var shown = events.Where(e => e.Start + e.Duration >= start && e.Start <= end).ToList();

        // The kernel's row on top, then the hosts in the order they started.
        var kernelPid = names.FirstOrDefault(n => n.Value.StartsWith("kernel", StringComparison.Ordinal)).Key;
        var rows = names.Keys.OrderBy(pid => pid == kernelPid ? 0 : 1).ThenBy(pid => pid).ToList();
        var plot = new Plot();
        foreach (var e in shown.Where(e => e.Phase == "X"))
        {
            var row = rows.IndexOf(e.Pid);
            var y = rows.Count - 1 - row;
            var rectangle = plot.Add.Rectangle(e.Start, Math.Max(e.Start + e.Duration, e.Start + ((end - start) / 2000)), y - 0.35, y + 0.35);
            rectangle.FillStyle.Color = Palette[row % Palette.Length].WithAlpha(0.6);
            rectangle.LineStyle.Width = 0;
            if (irp is not null)
            {
                var label = plot.Add.Text(e.Name, e.Start, y + 0.3);
                label.LabelFontSize = 11;
            }
        }

        foreach (var e in shown.Where(e => e.Phase == "i"))
        {
            var y = rows.Count - 1 - rows.IndexOf(e.Pid);
            var marker = plot.Add.Marker(e.Start, y + 0.45, MarkerShape.FilledTriangleDown, 10, Colors.Red);
            marker.LegendText = "";
            var label = plot.Add.Text(e.Name, e.Start, y + 0.5);
            label.LabelFontSize = 10;
            label.LabelFontColor = Colors.DarkRed;
        }

        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. rows.Select((pid, i) => new Tick(rows.Count - 1 - i, names[pid]))]);
        plot.Axes.Left.MajorTickStyle.Length = 0;
        plot.Axes.SetLimits(start, end, -0.7, rows.Count - 0.2);
        plot.XLabel("ms since the trace started");
        plot.Title($"{shown.Count(e => e.Phase == "X")} slices, {shown.Count(e => e.Phase == "i")} events, {rows.Count} processes");
        var height = Math.Max(300, 120 + (rows.Count * 60));
        if (output.Extension.Equals(".svg", StringComparison.OrdinalIgnoreCase))
        {
            plot.SaveSvg(output.FullName, 1400, height);
        }
        else
        {
            plot.SavePng(output.FullName, 1400, height);
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Timeline written to {output.FullName} ({shown.Count} events, {rows.Count} processes)."));
        return 0;
    }

    private static (List<TraceEvent> Events, Dictionary<int, string> Names) Read(string json)
    {
        using var document = JsonDocument.Parse(json);
        var events = new List<TraceEvent>();
        var names = new Dictionary<int, string>();
        foreach (var e in document.RootElement.GetProperty("traceEvents").EnumerateArray())
        {
            var phase = e.GetProperty("ph").GetString() ?? "";
            var pid = e.GetProperty("pid").GetInt32();
            if (phase == "M")
            {
                names[pid] = e.GetProperty("args").GetProperty("name").GetString() ?? pid.ToString(CultureInfo.InvariantCulture);
                continue;
            }

            var start = e.GetProperty("ts").GetDouble() / 1000;
            var duration = e.TryGetProperty("dur", out var dur) ? dur.GetDouble() / 1000 : 0;
            long? irp = e.TryGetProperty("args", out var args) && args.TryGetProperty("irp", out var id) ? id.GetInt64() : null;
            events.Add(new TraceEvent(phase, pid, e.GetProperty("name").GetString() ?? "", start, duration, irp));
        }

        foreach (var pid in events.Select(e => e.Pid).Distinct().Where(pid => !names.ContainsKey(pid)))
        {
            names[pid] = $"PID {pid}";
        }

        return (events, names);
    }

    private sealed record TraceEvent(string Phase, int Pid, string Name, double Start, double Duration, long? Irp);
}
