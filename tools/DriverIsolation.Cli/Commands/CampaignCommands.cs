using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using DriverIsolation.Campaigns;
using DriverIsolation.Kernel;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary>
/// <c>drviso run</c> (a fault-injection campaign: every trial in a kernel process of its own,
/// the reports in --out), <c>drviso merge</c> (shards' outputs into one report) and the hidden
/// <c>drviso trial</c> (one trial, run by <c>drviso run</c>).
/// </summary>
internal static class CampaignCommands
{
    public static Command CreateRun()
    {
        var scenario = new Argument<FileInfo>("scenario") { Description = "The scenario file (JSON; docs/scenario.schema.json)" };
        var output = new Option<DirectoryInfo>("--out") { Description = "Where the reports go", Required = true };
        var seed = new Option<int?>("--seed") { Description = "Overrides the scenario's seed" };
        var trials = new Option<int?>("--trials") { Description = "Overrides the scenario's trials per cell" };
        var parallel = new Option<int>("--parallel") { Description = "Trials at a time (default: one per core: a trial mostly waits on deadlines and restarts)", DefaultValueFactory = _ => Environment.ProcessorCount };
        var shard = new Option<string?>("--shard") { Description = "Run slice k of N (k/N, 1-based) of the trials; merge the slices with drviso merge" };
        shard.Validators.Add(r =>
        {
            if (r.GetValue(shard) is { } text && !TryParseShard(text, out _, out _))
            {
                r.AddError($"--shard: expected k/N with 1 <= k <= N, like 2/8; got \"{text}\"");
            }
        });
        var trace = new Option<FileInfo?>("--trace")
        {
            Description = "Write one Chrome / Perfetto trace of every trial (each trial's kernel and hosts on their own tracks, on one clock) to this file; each trial's own trace goes to <out>/traces/",
        };
        var command = new Command("run", "Run a fault-injection campaign: every trial boots a kernel in its own process")
        {
            scenario, output, seed, trials, parallel, shard, trace,
        };
        command.SetAction((parse, ct) => RunAsync(parse.GetValue(scenario)!, parse.GetValue(output)!, parse.GetValue(seed), parse.GetValue(trials),
            parse.GetValue(parallel), parse.GetValue(shard), parse.GetValue(trace), ct));
        return command;
    }

    public static Command CreateTrial()
    {
        var scenario = new Argument<FileInfo>("scenario");
        var index = new Option<int>("--index") { Required = true };
        var seed = new Option<int?>("--seed");
        var trials = new Option<int?>("--trials");
        var events = new Option<bool>("--events") { Description = "Print every kernel event to standard error" };
        var trace = new Option<FileInfo?>("--trace") { Description = "Write the trial's trace to this file" };
        var traceOrigin = new Option<long?>("--trace-origin") { Description = "Time zero of the trace (a monotonic clock timestamp)" };
        var command = new Command("trial", "Run one trial of a campaign in this process (drviso run starts these)") { scenario, index, seed, trials, events, trace, traceOrigin };
        command.Hidden = true;
        command.SetAction((parse, ct) => TrialAsync(parse.GetValue(scenario)!, parse.GetValue(index), parse.GetValue(seed), parse.GetValue(trials), parse.GetValue(events),
            parse.GetValue(trace), parse.GetValue(traceOrigin), ct));
        return command;
    }

    public static Command CreateMerge()
    {
        var inputs = new Argument<DirectoryInfo[]>("dirs") { Description = "The --out directories of the shards", Arity = ArgumentArity.OneOrMore };
        var output = new Option<DirectoryInfo>("--out") { Description = "Where the merged report goes", Required = true };
        var command = new Command("merge", "Merge the outputs of drviso run --shard k/N into one report") { inputs, output };
        command.SetAction(parse => Merge(parse.GetValue(inputs)!, parse.GetValue(output)!));
        return command;
    }

    /// <summary>A scenario's driver: a sample's name, or a driver.json path.</summary>
    public static DriverManifest ResolveManifest(string reference)
    {
        if (reference.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            return ManifestLoader.LoadFile(reference);
        }

        string[] names = [.. EmbeddedManifests.SampleNames, .. EmbeddedManifests.ScenarioNames];
        var sample = names.FirstOrDefault(n => n.Equals(reference, StringComparison.OrdinalIgnoreCase))
            ?? throw new KeyNotFoundException($"not a sample driver ({string.Join(", ", names)}) nor a path to a .json manifest");
        return EmbeddedManifests.Load(sample);
    }

    private static async Task<int> RunAsync(FileInfo file, DirectoryInfo output, int? seed, int? trials, int parallel, string? shard, FileInfo? trace, CancellationToken ct)
    {
        Scenario scenario;
        try
        {
            scenario = ScenarioLoader.LoadFile(file.FullName, ResolveManifest);
        }
        catch (ScenarioException ex)
        {
            await Console.Error.WriteLineAsync($"drviso run: {ex.Message}").ConfigureAwait(false);
            return 2;
        }

        var all = CampaignPlan.Trials(scenario, trials, seed);
        var (k, n) = shard is not null && TryParseShard(shard, out var sk, out var sn) ? (sk, sn) : (1, 1);
        var mine = all.Where(t => t.Index % n == k - 1).ToList();
        var effectiveSeed = seed ?? scenario.Seed;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{scenario.Name}: {scenario.Faults.Count} faults x {scenario.Isolation.Count} isolation models x {scenario.Iommu.Count} IOMMU modes x {trials ?? scenario.Trials} trials = {all.Count} trials{(n > 1 ? $"; shard {k}/{n}: {mine.Count}" : "")}; seed {effectiveSeed}; {parallel} at a time"));

        var self = typeof(CampaignCommands).Assembly.Location;
        var traces = Path.Combine(output.FullName, "traces");
        var traceOrigin = Stopwatch.GetTimestamp();
        if (trace is not null)
        {
            Directory.CreateDirectory(traces);
        }

        var runner = new CampaignRunner(scenario, spec =>
        {
            var start = new ProcessStartInfo(Environment.ProcessPath ?? "dotnet");
            if (!Path.GetFileNameWithoutExtension(Environment.ProcessPath ?? "").Equals("drviso", StringComparison.OrdinalIgnoreCase))
            {
                start.ArgumentList.Add(self);
            }

            foreach (var arg in new[] { "trial", file.FullName, "--index", spec.Index.ToString(CultureInfo.InvariantCulture), "--seed", effectiveSeed.ToString(CultureInfo.InvariantCulture) })
            {
                start.ArgumentList.Add(arg);
            }

            if (trials is { } t)
            {
                start.ArgumentList.Add("--trials");
                start.ArgumentList.Add(t.ToString(CultureInfo.InvariantCulture));
            }

            if (trace is not null)
            {
                foreach (var arg in new[] { "--trace", TraceOf(traces, spec.Index), "--trace-origin", traceOrigin.ToString(CultureInfo.InvariantCulture) })
                {
                    start.ArgumentList.Add(arg);
                }
            }

            return start;
        }, parallel, TimeSpan.FromMinutes(3));

        IReadOnlyList<TrialVerdict> verdicts;
        var stopwatch = Stopwatch.StartNew();
        if (Console.IsOutputRedirected)
        {
            var finished = 0;
            verdicts = await runner.RunAsync(mine, v =>
            {
                var count = Interlocked.Increment(ref finished);
                if (count % Math.Max(1, mine.Count / 20) == 0 || count == mine.Count)
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{count}/{mine.Count} trials"));
                }
            }, ct).ConfigureAwait(false);
        }
        else
        {
            verdicts = await AnsiConsole.Progress().StartAsync(async progress =>
            {
                var task = progress.AddTask("trials", maxValue: mine.Count);
                return await runner.RunAsync(mine, _ => task.Increment(1), ct).ConfigureAwait(false);
            }).ConfigureAwait(false);
        }

        var report = CampaignReport.Build(scenario.Name, effectiveSeed, verdicts);
        report.Write(output.FullName, verdicts);
        Print(report);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{verdicts.Count} trials in {stopwatch.Elapsed.TotalSeconds:F1} s; reports in {output.FullName} (report.md, report.json, trials.csv, trials.json)"));
        if (trace is not null)
        {
            var merged = await TraceRecorder.MergeAsync(mine.Select(t => TraceOf(traces, t.Index)), trace.FullName, ct).ConfigureAwait(false);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Trace of {merged} trials written to {trace.FullName} (each trial's own in {traces}): open it in ui.perfetto.dev or chrome://tracing"));
        }

        return 0;
    }

    private static string TraceOf(string folder, int index) => Path.Combine(folder, string.Create(CultureInfo.InvariantCulture, $"trial-{index:D4}.json"));

    private static async Task<int> TrialAsync(FileInfo file, int index, int? seed, int? trials, bool printEvents, FileInfo? traceFile, long? traceOrigin, CancellationToken ct)
    {
        var scenario = ScenarioLoader.LoadFile(file.FullName, ResolveManifest);
        var spec = CampaignPlan.Trials(scenario, trials, seed).FirstOrDefault(t => t.Index == index)
            ?? throw new ArgumentOutOfRangeException(nameof(index), $"the scenario has no trial {index}");
        var trace = traceFile is null ? null : new TraceRecorder(origin: traceOrigin,
            label: string.Create(CultureInfo.InvariantCulture, $"trial {index} ({spec.Isolation.ToManifestName()}, IOMMU {spec.Iommu.ToString().ToLowerInvariant()}, {scenario.Faults[spec.FaultIndex].Type}): "));
        var verdict = await TrialRunner.RunAsync(scenario, spec, null, onEvent: e =>
        {
            if (printEvents)
            {
                Console.Error.WriteLine(e.ToString());
            }

            // Said at once, on the thread that saw it: a fault may take this process down next.
            if (e.Kind == KernelEventKind.FaultInjected)
            {
                Console.Out.WriteLine(CampaignRunner.FaultLine);
                Console.Out.Flush();
            }
        }, onBooted: () =>
        {
            Console.Out.WriteLine(CampaignRunner.BootedLine);
            Console.Out.Flush();
        }, trace: trace, cancellationToken: ct).ConfigureAwait(false);
        if (trace is not null && traceFile is not null)
        {
            await trace.WriteAsync(traceFile.FullName, ct).ConfigureAwait(false);
        }

        Console.Out.WriteLine(JsonSerializer.Serialize(verdict));
        return 0;
    }

    private static int Merge(DirectoryInfo[] inputs, DirectoryInfo output)
    {
        var verdicts = new List<TrialVerdict>();
        string? name = null;
        int? seed = null;
        foreach (var input in inputs)
        {
            var trialsFile = Path.Combine(input.FullName, "trials.json");
            var reportFile = Path.Combine(input.FullName, "report.json");
            if (!File.Exists(trialsFile) || !File.Exists(reportFile))
            {
                Console.Error.WriteLine($"drviso merge: {input.FullName} has no trials.json and report.json (is it the --out of drviso run?)");
                return 2;
            }

            var report = JsonSerializer.Deserialize<CampaignReport>(File.ReadAllText(reportFile))!;
            if ((name ?? report.Scenario) != report.Scenario || (seed ?? report.Seed) != report.Seed)
            {
                Console.Error.WriteLine($"drviso merge: {input.FullName} is scenario {report.Scenario} seed {report.Seed}, the others {name} seed {seed}");
                return 2;
            }

            (name, seed) = (report.Scenario, report.Seed);
            verdicts.AddRange(JsonSerializer.Deserialize<List<TrialVerdict>>(File.ReadAllText(trialsFile))!);
        }

        var duplicate = verdicts.GroupBy(v => v.Index).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            Console.Error.WriteLine($"drviso merge: trial {duplicate.Key} is in more than one input (the same shard twice?)");
            return 2;
        }

        var merged = CampaignReport.Build(name!, seed!.Value, verdicts);
        merged.Write(output.FullName, verdicts);
        Print(merged);
        Console.WriteLine($"{verdicts.Count} trials from {inputs.Length} directories; reports in {output.FullName}");
        return 0;
    }

    private static void Print(CampaignReport report)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("fault").AddColumn("isolation").AddColumn("IOMMU")
            .AddColumn(new TableColumn("trials").RightAligned()).AddColumn(new TableColumn("survival").RightAligned())
            .AddColumn(new TableColumn("innocent hurt").RightAligned()).AddColumn(new TableColumn("IRPs lost").RightAligned())
            .AddColumn(new TableColumn("recovery p50 ms").RightAligned());
        foreach (var r in report.Summary)
        {
            table.AddRow(r.Fault, r.Isolation, r.Iommu, r.Trials.ToString(CultureInfo.InvariantCulture),
                (r.SystemSurvival * 100).ToString("F1", CultureInfo.InvariantCulture) + " %",
                (r.InnocentDevicesHurt * 100).ToString("F1", CultureInfo.InvariantCulture) + " %",
                r.IrpsLost.ToString(CultureInfo.InvariantCulture),
                r.RecoveryP50Ms?.ToString("F1", CultureInfo.InvariantCulture) ?? "-");
        }

        AnsiConsole.Write(table);
    }

    private static bool TryParseShard(string text, out int k, out int n)
    {
        k = n = 0;
        var parts = text.Split('/');
        return parts.Length == 2
            && int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out k)
            && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out n)
            && n >= 1 && k >= 1 && k <= n;
    }
}
