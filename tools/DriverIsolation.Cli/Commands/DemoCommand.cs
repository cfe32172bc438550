using System.CommandLine;
using System.Globalization;
using DriverIsolation.Cli.Demo;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso demo</c>: boot the sample drivers, run a short mixed workload through the
/// client API, and print what each device served, from which process, how fast.</summary>
internal static class DemoCommand
{
    private const int WarmUpRequests = 64;

    public static Command Create()
    {
        var isolation = new Option<string>("--isolation")
        {
            Description = "Where the drivers run: in-kernel, shared-host or process",
            DefaultValueFactory = _ => "process",
        };
        isolation.AcceptOnlyFromAmong("in-kernel", "shared-host", "process");
        var requests = new Option<int>("--requests")
        {
            Description = "Requests per device (about)",
            DefaultValueFactory = _ => 400,
        };
        requests.Validators.Add(r =>
        {
            if (r.GetValue(requests) is < 4 or > 1_000_000)
            {
                r.AddError("--requests must be between 4 and 1000000");
            }
        });
        var iommu = new Option<string>("--iommu")
        {
            Description = "The IOMMU's mode for the simulated devices: off, strict or lazy",
            DefaultValueFactory = _ => "strict",
        };
        iommu.AcceptOnlyFromAmong("off", "strict", "lazy");
        var seed = new Option<int>("--seed") { Description = "Seed of the workload's data", DefaultValueFactory = _ => 1 };
        var verbose = new Option<bool>("--verbose") { Description = "Show the kernel's log" };
        var trace = new Option<FileInfo?>("--trace") { Description = "Write a Chrome / Perfetto trace of every IRP to this file (open it in ui.perfetto.dev)" };

        var command = new Command("demo", "Boot the sample drivers and run a short mixed workload through them")
        {
            isolation, iommu, requests, seed, verbose, trace,
        };
        command.SetAction((parse, _) => RunAsync(
            IsolationModels.Parse(parse.GetValue(isolation)!), Enum.Parse<Kernel.Hardware.IommuMode>(parse.GetValue(iommu)!, ignoreCase: true), parse.GetValue(requests), parse.GetValue(seed), parse.GetValue(verbose), parse.GetValue(trace)));
        return command;
    }

    private static async Task<int> RunAsync(IsolationModel isolation, Kernel.Hardware.IommuMode iommuMode, int requests, int seed, bool verbose, FileInfo? traceFile)
    {
        using var loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o => o.SingleLine = true)
            .SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.Warning));
        // No warm pool: nothing crashes in the demo, and a spare host starting up would compete
        // with the workload for the CPU while it is being measured.
        await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 0, IommuMode = iommuMode }, loggerFactory);

        AnsiConsole.MarkupLine($"[bold]DriverIsolation demo[/]: kernel PID [cyan]{Microkernel.ProcessId}[/], isolation [cyan]{isolation.ToManifestName()}[/], IOMMU [cyan]{iommuMode.ToString().ToLowerInvariant()}[/]");
        var trace = traceFile is null ? null : new TraceRecorder();
        kernel.Trace = trace;
        var booted = System.Diagnostics.Stopwatch.StartNew();
        await kernel.StartAsync(EmbeddedManifests.Samples(), isolation).ConfigureAwait(false);
        var drivers = kernel.GetDrivers();
        AnsiConsole.MarkupLine($"Booted {drivers.Count} drivers in {booted.ElapsedMilliseconds} ms: " +
            string.Join(", ", drivers.Select(d => $"{d.Name} ({d.Host}, PID {d.ProcessId}{(d.State == DriverState.Running ? "" : $", {d.State}")})")).EscapeMarkup());
        if (drivers.Any(d => d.State != DriverState.Running))
        {
            foreach (var failed in drivers.Where(d => d.State != DriverState.Running))
            {
                AnsiConsole.MarkupLine($"[red]{failed.Name}: {failed.Failure.EscapeMarkup()}[/]");
            }

            return 1;
        }

        // An untimed pass first, so the table shows steady-state latency rather than JIT warm-up.
        var warmUp = new DemoWorkload(kernel, new LatencyRecorder(), WarmUpRequests, seed + 1);
        await warmUp.RunAsync().ConfigureAwait(false);

        var recorder = new LatencyRecorder();
        var workload = new DemoWorkload(kernel, recorder, requests, seed);
        var ran = System.Diagnostics.Stopwatch.StartNew();
        await workload.RunAsync().ConfigureAwait(false);
        ran.Stop();

        PrintSummary(kernel, recorder);
        var refused = kernel.Events.Count(KernelEventKind.CompletionRefused);
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"{recorder.Devices.Values.Sum(d => d.Count)} requests in {ran.ElapsedMilliseconds} ms. Data verified: {workload.VerifiedBlocks} disk blocks through XorFilter → RamDisk " +
            $"(the filter transformed {workload.FilterStatistics.Writes} writes and {workload.FilterStatistics.Reads} reads), {workload.VerifiedMessages} echo messages, " +
            $"{workload.VerifiedTransfers} VBlock transfers, {workload.VerifiedFrames} frames between the NICs."));
        var iommuClean = PrintHardware(kernel);
        AnsiConsole.MarkupLine($"Kernel: {kernel.OutstandingIrps} IRPs outstanding, {refused} completions refused by the verifier.");
        foreach (var problem in warmUp.Problems.Concat(workload.Problems).Take(20))
        {
            AnsiConsole.MarkupLine($"[red]problem:[/] {problem.EscapeMarkup()}");
        }

        if (trace is not null && traceFile is not null)
        {
            kernel.Trace = null;
            await trace.WriteAsync(traceFile.FullName).ConfigureAwait(false);
            AnsiConsole.MarkupLine($"Trace written to {traceFile.FullName.EscapeMarkup()}{(trace.Dropped > 0 ? $" ({trace.Dropped} events dropped)" : "")}: open it in ui.perfetto.dev or chrome://tracing.");
        }

        return warmUp.Problems.Count == 0 && workload.Problems.Count == 0 && kernel.OutstandingIrps == 0 && iommuClean ? 0 : 1;
    }

    /// <summary>The simulated devices, who drives them, and what the IOMMU saw. In the normal demo
    /// every DMA is inside its driver's windows: no faults, kernel memory intact.</summary>
    private static bool PrintHardware(Microkernel kernel)
    {
        var iommu = kernel.GetIommu();
        if (iommu is null)
        {
            AnsiConsole.MarkupLine("[red]No simulated hardware was started.[/]");
            return false;
        }

        AnsiConsole.MarkupLine(("Hardware: " + string.Join(", ", iommu.Devices.Select(d =>
            $"{d.Name} ({d.Kind}, requester {d.RequesterId}, bound to {d.BoundTo ?? "nobody"})"))).EscapeMarkup());
        var lookups = iommu.IotlbHits + iommu.IotlbMisses;
        var integrity = kernel.VerifyKernelMemory();
        var faultColour = iommu.FaultCount == 0 ? "green" : "red";
        AnsiConsole.MarkupLine(string.Create(CultureInfo.InvariantCulture,
            $"IOMMU {iommu.Mode.ToString().ToLowerInvariant()}: [{faultColour}]{iommu.FaultCount} faults[/], {lookups} translations " +
            $"(IOTLB hit rate {(lookups == 0 ? 0 : 100.0 * iommu.IotlbHits / lookups):F1} %), kernel memory {(integrity.Intact ? "intact" : "[red]CORRUPT[/]")}."));
        foreach (var fault in iommu.Faults.Take(5))
        {
            AnsiConsole.MarkupLine($"[red]IOMMU fault:[/] {fault.ToString().EscapeMarkup()}");
        }

        return iommu.FaultCount == 0 && integrity.Intact;
    }

    private static void PrintSummary(Microkernel kernel, LatencyRecorder recorder)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("Device")
            .AddColumn("Stack (driver@PID)")
            .AddColumn(new TableColumn("Requests").RightAligned())
            .AddColumn("By status")
            .AddColumn(new TableColumn("p50 µs").RightAligned())
            .AddColumn(new TableColumn("p99 µs").RightAligned());
        foreach (var device in kernel.GetDevices())
        {
            if (!recorder.Devices.TryGetValue(device.Name, out var samples))
            {
                continue;
            }

            var stack = string.Join(" → ", device.Stack.Select(l => $"{l.Driver}@{l.ProcessId}{(l.ProcessId == Microkernel.ProcessId ? " (kernel)" : "")}"));
            var statuses = string.Join(", ", samples.ByStatus.OrderByDescending(s => s.Value).Select(s => $"{s.Key} {s.Value}"));
            table.AddRow(
                device.Name.EscapeMarkup(),
                stack.EscapeMarkup(),
                samples.Count.ToString(CultureInfo.InvariantCulture),
                statuses,
                samples.Percentile(50).ToString("F1", CultureInfo.InvariantCulture),
                samples.Percentile(99).ToString("F1", CultureInfo.InvariantCulture));
        }

        AnsiConsole.Write(table);
    }
}
