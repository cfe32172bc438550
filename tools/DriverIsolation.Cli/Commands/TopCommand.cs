using System.CommandLine;
using System.Globalization;
using DriverIsolation.Cli.Control;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace DriverIsolation.Cli.Commands;

/// <summary>
/// <c>drviso top</c>: a live view of a serving kernel, over its control pipe. Every refresh asks
/// for the kernel's running totals (drivers, IRPs and latency buckets per device, events per
/// driver) and shows the interval since the last one: IRPs a second, p50 and p99 latency (read
/// from buckets 25 % apart), restarts, IOMMU faults, state. Interactive on a terminal; with
/// <c>--iterations n</c> (or when its output is not a terminal) it prints one table per refresh.
/// </summary>
internal static class TopCommand
{
    public static Command Create()
    {
        var kernel = new Option<int?>("--kernel") { Description = "PID of the serving kernel (default: the only one serving)" };
        var interval = new Option<string>("--interval") { Description = "Time between refreshes (e.g. 500ms, 2s)", DefaultValueFactory = _ => "1s" };
        interval.Validators.Add(r =>
        {
            if (!Durations.TryParse(r.GetValue(interval), out _))
            {
                r.AddError($"--interval: expected a duration like 500ms or 2s; got \"{r.GetValue(interval)}\"");
            }
        });
        var iterations = new Option<int?>("--iterations") { Description = "Print this many refreshes as plain tables, then exit (for scripts)" };
        var command = new Command("top", "A live view of a serving kernel: drivers, host PIDs, state, IRP rate and latency, restarts, IOMMU faults")
        {
            kernel, interval, iterations,
        };
        command.SetAction((parse, ct) => RunAsync(parse.GetValue(kernel),
            Durations.TryParse(parse.GetValue(interval), out var period) ? period : TimeSpan.FromSeconds(1), parse.GetValue(iterations), ct));
        return command;
    }

    private static async Task<int> RunAsync(int? kernelPid, TimeSpan interval, int? iterations, CancellationToken ct)
    {
        int pid;
        ControlResponse previous;
        try
        {
            pid = ControlClient.ResolveKernel(kernelPid);
            previous = await StatsAsync(pid).ConfigureAwait(false);
        }
        catch (InvalidOperationException ex)
        {
            await Console.Error.WriteLineAsync($"drviso: {ex.Message}").ConfigureAwait(false);
            return 1;
        }

        var plain = iterations is not null || Console.IsOutputRedirected;
        try
        {
            if (plain)
            {
                for (var i = 0; iterations is null || i < iterations; i++)
                {
                    await Task.Delay(interval, ct).ConfigureAwait(false);
                    var current = await StatsAsync(pid).ConfigureAwait(false);
                    AnsiConsole.Write(Render(pid, previous, current));
                    previous = current;
                }

                return 0;
            }

            await AnsiConsole.Live(Render(pid, previous, previous)).StartAsync(async live =>
            {
                while (!ct.IsCancellationRequested)
                {
                    await Task.Delay(interval, ct).ConfigureAwait(false);
                    var current = await StatsAsync(pid).ConfigureAwait(false);
                    live.UpdateTarget(Render(pid, previous, current));
                    previous = current;
                }
            }).ConfigureAwait(false);
            return 0;
        }
        catch (OperationCanceledException)
        {
            return 0;
        }
        catch (InvalidOperationException ex)
        {
            // The kernel stopped while we watched.
            await Console.Error.WriteLineAsync($"drviso: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
    }

    private static async Task<ControlResponse> StatsAsync(int pid)
    {
        var response = await ControlClient.SendAsync(pid, new ControlRequest("stats")).ConfigureAwait(false);
        return response.Ok ? response : throw new InvalidOperationException(response.Error);
    }

    /// <summary>One screen: the interval from <paramref name="before"/> to <paramref name="now"/>.</summary>
    internal static IRenderable Render(int pid, ControlResponse before, ControlResponse now)
    {
        var seconds = Math.Max(0.001, (now.AtMilliseconds - before.AtMilliseconds) / 1000.0);
        var devicesBefore = (before.Devices ?? []).ToDictionary(d => d.Name, StringComparer.Ordinal);
        var deltas = (now.Devices ?? []).Select(d => Delta(d, devicesBefore.GetValueOrDefault(d.Name))).ToList();
        var iommuFaults = (now.Events ?? []).Where(e => e.Kind == "IommuFault").ToDictionary(e => e.Driver, e => e.Count, StringComparer.Ordinal);

        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("Driver").AddColumn("State").AddColumn("Isolation").AddColumn("Transport").AddColumn(new TableColumn("Host PID").RightAligned())
            .AddColumn(new TableColumn("IRP/s").RightAligned()).AddColumn(new TableColumn("Failed/s").RightAligned())
            .AddColumn(new TableColumn("p50").RightAligned()).AddColumn(new TableColumn("p99").RightAligned())
            .AddColumn(new TableColumn("Restarts").RightAligned()).AddColumn(new TableColumn("IOMMU faults").RightAligned()).AddColumn("Last failure");
        foreach (var driver in now.Drivers ?? [])
        {
            // A driver serves every request to a device whose stack it is in.
            var mine = deltas.Where(d => d.Stack.Contains(driver.Name)).ToList();
            var completed = mine.Sum(d => d.Completed);
            var buckets = Sum(mine.Select(d => d.Buckets));
            var state = driver.State switch
            {
                "Running" => "[green]Running[/]",
                "Restarting" => "[yellow]Restarting[/]",
                "Quarantined" => "[red]Quarantined[/]",
                var other => $"[red]{other.EscapeMarkup()}[/]",
            };
            table.AddRow(driver.Name.EscapeMarkup(), state, driver.Isolation, driver.Transport, driver.ProcessId.ToString(CultureInfo.InvariantCulture),
                (completed / seconds).ToString("F0", CultureInfo.InvariantCulture), (mine.Sum(d => d.Failed) / seconds).ToString("F0", CultureInfo.InvariantCulture),
                Percentile(buckets, 0.50), Percentile(buckets, 0.99),
                driver.Restarts.ToString(CultureInfo.InvariantCulture), iommuFaults.GetValueOrDefault(driver.Name).ToString(CultureInfo.InvariantCulture),
                Shorten(driver.Failure ?? "").EscapeMarkup());
        }

        var total = deltas.Sum(d => d.Completed);
        var header = new Markup(string.Create(CultureInfo.InvariantCulture,
            $"[bold]drviso top[/]  kernel PID {pid}  ·  {total / seconds:F0} IRP/s  ·  {now.InFlight} in flight  ·  IOMMU {now.Iommu}, {iommuFaults.Values.Sum()} faults  ·  every {seconds:F1} s")
            + (now.SafeMode is { } safe ? $"\n[red]SAFE MODE[/]: {safe.EscapeMarkup()}" : ""));
        return new Rows(header, table);
    }

    private static (IReadOnlyList<string> Stack, long Completed, long Failed, long[] Buckets) Delta(ControlDevice now, ControlDevice? before) =>
        (now.Stack, now.Completed - (before?.Completed ?? 0), now.Failed - (before?.Failed ?? 0),
            [.. now.LatencyBuckets.Select((count, i) => count - (before is { } b && i < b.LatencyBuckets.Count ? b.LatencyBuckets[i] : 0))]);

    private static long[] Sum(IEnumerable<long[]> histograms)
    {
        var sum = new long[LiveStatistics.BucketBoundsMicros.Length];
        foreach (var histogram in histograms)
        {
            for (var i = 0; i < Math.Min(sum.Length, histogram.Length); i++)
            {
                sum[i] += histogram[i];
            }
        }

        return sum;
    }

    /// <summary>The bucket bound at or under which a fraction of the interval's IRPs finished; "-"
    /// when none did.</summary>
    internal static string Percentile(long[] buckets, double fraction)
    {
        var total = buckets.Sum();
        if (total == 0)
        {
            return "-";
        }

        var rank = (long)Math.Ceiling(total * fraction);
        long seen = 0;
        for (var i = 0; i < buckets.Length; i++)
        {
            seen += buckets[i];
            if (seen >= rank)
            {
                return Format(LiveStatistics.BucketBoundsMicros[i]);
            }
        }

        return Format(LiveStatistics.BucketBoundsMicros[^1]);
    }

    private static string Format(double micros) => micros switch
    {
        < 1000 => string.Create(CultureInfo.InvariantCulture, $"{micros:F0} us"),
        < 1_000_000 => string.Create(CultureInfo.InvariantCulture, $"{micros / 1000:F1} ms"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{micros / 1_000_000:F1} s"),
    };

    private static string Shorten(string text) => text.Length <= 48 ? text : text[..47] + "…";
}
