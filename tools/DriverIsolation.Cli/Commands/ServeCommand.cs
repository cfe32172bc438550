using System.CommandLine;
using System.Globalization;
using System.Net;
using DriverIsolation.Campaigns;
using DriverIsolation.Cli.Control;
using DriverIsolation.Cli.Nbd;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso serve</c>: boot a kernel and keep it running, answering on its control pipe
/// (<c>drviso drivers</c>, <c>drviso quarantine</c>, <c>drviso inject</c>) and exporting its block
/// devices over NBD, until Ctrl+C or SIGTERM.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var manifests = new Option<DirectoryInfo?>("--manifests") { Description = "A folder of driver manifests (*.json); default: the sample drivers" };
        var isolation = new Option<string?>("--isolation") { Description = "Run every driver in this model: in-kernel, shared-host or process" };
        isolation.AcceptOnlyFromAmong("in-kernel", "shared-host", "process");
        var verbose = new Option<bool>("--verbose") { Description = "Show the kernel's log" };
        var iommu = new Option<string?>("--iommu")
        {
            Description = "The IOMMU's mode: off (passthrough), strict (unmap invalidates at once, the default) or lazy (batched invalidation)",
        };
        var scenario = new Option<FileInfo?>("--scenario")
        {
            Description = "Boot the machine and drivers of a campaign scenario (docs/campaigns.md) instead of the samples; its faults are not armed",
        };
        iommu.AcceptOnlyFromAmong("off", "strict", "lazy");
        var nbd = new Option<string>("--nbd")
        {
            Description = "Export the block devices over NBD on this address:port (port 0: any free one), or \"off\"",
            DefaultValueFactory = _ => "127.0.0.1:10809",
        };
        nbd.Validators.Add(r =>
        {
            var text = r.GetValue(nbd);
            if (text != "off" && !IPEndPoint.TryParse(text ?? "", out _))
            {
                r.AddError($"--nbd: expected an address:port like 127.0.0.1:10809, or off; got \"{text}\"");
            }
        });
        var transport = new Option<string?>("--transport")
        {
            Description = "How requests reach the driver hosts: pipe or ring (shared memory); default: as each manifest says, else pipe",
        };
        transport.AcceptOnlyFromAmong("pipe", "ring");
        var runToCompletion = new Option<bool>("--run-to-completion")
        {
            Description = "Run drivers' routines on the hosts' reader threads and the NBD server's continuations on the kernel's (no thread-pool hop per request; see docs/performance.md)",
        };
        var clientTimeout = new Option<string?>("--nbd-client-timeout")
        {
            Description = "Hang up on an NBD client that leaves the handshake unanswered, or a reply untaken, this long (e.g. 30s, the default)",
        };
        clientTimeout.Validators.Add(r =>
        {
            if (r.GetValue(clientTimeout) is { } text && (!Durations.TryParse(text, out var value) || value <= TimeSpan.Zero))
            {
                r.AddError($"--nbd-client-timeout: expected a duration like 500ms or 30s; got \"{text}\"");
            }
        });
        var chaos = new Option<string?>("--chaos-kill-every") { Description = "Kill the hosts of the drivers on block hardware this often (e.g. 2s)" };
        var trace = new Option<FileInfo?>("--trace") { Description = "Record a Chrome / Perfetto trace of every IRP while serving; written to this file when the kernel stops" };
        var load = new Option<int>("--load") { Description = "Keep every disk and the null device busy with this many 4 KiB reads a second each (something to watch in drviso top)", DefaultValueFactory = _ => 0 };
        load.Validators.Add(r =>
        {
            if (r.GetValue(load) is < 0 or > 100_000)
            {
                r.AddError("--load: reads a second per device, 0 to 100000");
            }
        });
        chaos.Validators.Add(r =>
        {
            if (r.GetValue(chaos) is { } text && !Durations.TryParse(text, out _))
            {
                r.AddError($"--chaos-kill-every: expected a duration like 500ms or 2s; got \"{text}\"");
            }
        });
        var command = new Command("serve", "Boot a kernel and keep it running, its block devices exported over NBD; manage it with drviso drivers / quarantine / inject")
        {
            manifests, scenario, isolation, iommu, transport, runToCompletion, nbd, clientTimeout, chaos, trace, load, verbose,
        };
        command.Validators.Add(r =>
        {
            if (r.GetValue(manifests) is not null && r.GetValue(scenario) is not null)
            {
                r.AddError("--manifests and --scenario both name the drivers: give one");
            }
        });
        command.SetAction((parse, ct) => RunAsync(parse.GetValue(manifests), parse.GetValue(scenario), parse.GetValue(isolation),
            parse.GetValue(iommu) is { } mode ? Enum.Parse<Kernel.Hardware.IommuMode>(mode, ignoreCase: true) : null, parse.GetValue(nbd)!,
            parse.GetValue(chaos) is { } every && Durations.TryParse(every, out var period) ? period : null, parse.GetValue(verbose),
            parse.GetValue(transport) switch { "ring" => Transport.Ring, "pipe" => Transport.Pipe, _ => null }, parse.GetValue(trace), parse.GetValue(load), parse.GetValue(runToCompletion),
            parse.GetValue(clientTimeout) is { } timeoutText && Durations.TryParse(timeoutText, out var timeout) ? timeout : null, ct));
        return command;
    }

    private static async Task<int> RunAsync(DirectoryInfo? folder, FileInfo? scenarioFile, string? isolation, Kernel.Hardware.IommuMode? iommu, string nbdEndpoint,
        TimeSpan? chaosEvery, bool verbose, Transport? transport, FileInfo? traceFile, int load, bool runToCompletion, TimeSpan? clientTimeout,
        CancellationToken stop)
    {
        IReadOnlyList<DriverManifest> manifests;
        // Every driver behind a dormant fault shim: drviso inject can break any of them by hand.
        var options = new KernelOptions { FaultInjection = true };
        if (runToCompletion)
        {
            options.HostDispatch = DriverHost.HostDispatch.Inline;
            options.InlineCompletions = true;
        }

        try
        {
            if (scenarioFile is not null)
            {
                // The scenario's machine and drivers, each in its pinned model or the first the
                // scenario compares (--isolation overrides both).
                var scenario = ScenarioLoader.LoadFile(scenarioFile.FullName, CampaignCommands.ResolveManifest);
                manifests = [.. scenario.Drivers.Select(d => d.Manifest with { Isolation = d.PinnedIsolation ?? scenario.Isolation[0] })];
                options.PhysicalMemoryBytes = scenario.Machine.MemoryMb << 20;
                iommu ??= scenario.Machine.Iommu;
            }
            else
            {
                manifests = folder is null
                    ? EmbeddedManifests.Samples()
                    : [.. folder.EnumerateFiles("*.json").OrderBy(f => f.Name, StringComparer.Ordinal).Select(f => ManifestLoader.LoadFile(f.FullName))];
            }
        }
        catch (Exception ex) when (ex is ManifestException or DirectoryNotFoundException or ScenarioException)
        {
            await Console.Error.WriteLineAsync($"drviso serve: {ex.Message}").ConfigureAwait(false);
            return 2;
        }

        var iommuMode = iommu ?? Kernel.Hardware.IommuMode.Strict;
        options.IommuMode = iommuMode;
        if (transport is { } chosen)
        {
            manifests = [.. manifests.Select(m => m with { Transport = chosen })];
        }

        if (chaosEvery is not null)
        {
            manifests = [.. manifests.Select(SurviveChaos)];
        }

        using var loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o => o.SingleLine = true)
            .SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.Warning));
        await using var kernel = new Microkernel(options, loggerFactory);
        var trace = traceFile is null ? null : new TraceRecorder();
        kernel.Trace = trace;
        var statistics = new LiveStatistics(kernel);
        try
        {
            await kernel.StartAsync(manifests, isolation is null ? null : IsolationModels.Parse(isolation), stop).ConfigureAwait(false);
        }
        catch (ManifestException ex)
        {
            await Console.Error.WriteLineAsync($"drviso serve: {ex.Message}").ConfigureAwait(false);
            return 2;
        }

        using var control = new ControlServer(kernel, statistics);
        AnsiConsole.MarkupLine($"serving: kernel PID {Microkernel.ProcessId}; control pipe {ControlPipe.NameFor(Microkernel.ProcessId)}; IOMMU {iommuMode.ToString().ToLowerInvariant()}");
        DriversCommand.Print(kernel.GetDrivers().Select(d => new ControlDriver(d.Name, d.State.ToString(), d.Isolation.ToManifestName(), d.ProcessId, d.Restarts, d.Failure)).ToList(), kernel.SafeModeReason);
        await using var nbd = nbdEndpoint == "off" ? null : new NbdServer(kernel, IPEndPoint.Parse(nbdEndpoint), verbose ? Console.WriteLine : null, clientTimeout);
        if (nbd is not null)
        {
            try
            {
                await nbd.StartAsync(stop).ConfigureAwait(false);
            }
            catch (System.Net.Sockets.SocketException ex)
            {
                await Console.Error.WriteLineAsync($"drviso serve: cannot listen for NBD on {nbdEndpoint}: {ex.Message}").ConfigureAwait(false);
                return 2;
            }

            // Plain output (no markup, no wrapping): scripts and tests read this line.
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"NBD: listening on nbd://{nbd.LocalEndpoint}, exports: {string.Join(", ", nbd.Exports.Select(e => $"{e.Name} ({e.Size} bytes)"))}"));
        }

        using var chaosTimer = chaosEvery is { } every ? new Timer(_ => KillBlockDrivers(kernel), null, every, every) : null;
        if (chaosEvery is not null)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Chaos: the hosts of the drivers on block hardware are killed every {chaosEvery.Value.TotalMilliseconds:F0} ms (their crash-loop limit lifted, in-flight requests retried)"));
        }

        if (load > 0)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Load: {load} reads a second on each disk and the null device"));
        }

        AnsiConsole.MarkupLine("Ctrl+C stops the kernel.");
        try
        {
            await Task.WhenAll(control.RunAsync(stop), nbd?.RunAsync(stop) ?? Task.CompletedTask,
                load > 0 ? LoadAsync(kernel, load, stop) : Task.CompletedTask).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Stopped.
        }

        statistics.Dispose();
        if (trace is not null && traceFile is not null)
        {
            kernel.Trace = null;
            await trace.WriteAsync(traceFile.FullName, CancellationToken.None).ConfigureAwait(false);
            Console.WriteLine($"Trace written to {traceFile.FullName}{(trace.Dropped > 0 ? $" ({trace.Dropped} events dropped)" : "")}: open it in ui.perfetto.dev or chrome://tracing");
        }

        return 0;
    }

    /// <summary>Reads 4 KiB at a time from every disk and the null device, at a steady rate each,
    /// until the kernel stops. A read that fails (a driver down, quarantined) is just counted by the
    /// kernel; the load goes on.</summary>
    private static Task LoadAsync(Microkernel kernel, int perSecond, CancellationToken stop) =>
        Task.WhenAll(kernel.GetDevices().Where(d => d.Type is DeviceType.Disk or DeviceType.Null).Select(async device =>
        {
            DeviceHandle handle;
            try
            {
                handle = await kernel.OpenAsync(device.Name, stop).ConfigureAwait(false);
            }
            catch (IoException ex)
            {
                Console.WriteLine($"Load: cannot open {device.Name}: {ex.Message}");
                return;
            }

            await using var opened = handle.ConfigureAwait(false);
            var buffer = new byte[4096];
            var random = new Random(device.Name.Length);
            using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1.0 / perSecond));
            try
            {
                while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
                {
                    await handle.ReadAsync(buffer, device.Type == DeviceType.Disk ? random.Next(256) * 4096L : 0, stop).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
                // Stopped.
            }
        }));

    /// <summary>Under --chaos-kill-every the storage drivers are killed on purpose, over and over:
    /// their crash-loop limit is lifted (or they would be quarantined after a few kills, as a
    /// driver that crashes that often should be), an instance counts as healthy after 100 ms so
    /// every kill is answered by an immediate restart, and the requests a dead host held are
    /// re-issued to the next one. Other drivers keep their manifests' policies.</summary>
    private static DriverManifest SurviveChaos(DriverManifest manifest) =>
        manifest.Devices.Any(d => d.Hardware?.Kind == "block")
            ? manifest with { Recovery = manifest.Recovery with { MaxFailures = int.MaxValue, QuietPeriod = TimeSpan.FromMilliseconds(100), InFlight = InFlightPolicy.Retry } }
            : manifest;

    /// <summary>SIGKILLs the host of every running driver bound to a simulated block device (its
    /// media lives on the device, so nothing written is lost; retry hides the crash).</summary>
    private static void KillBlockDrivers(Microkernel kernel)
    {
        var drivers = kernel.GetIommu()?.Devices.Where(d => d.Kind == "block" && d.BoundTo is not null).Select(d => d.BoundTo!).Distinct() ?? [];
        foreach (var driver in drivers)
        {
            if (kernel.GetDrivers().FirstOrDefault(d => d.Name == driver) is { State: DriverState.Running, Isolation: not IsolationModel.InKernel })
            {
                Console.WriteLine($"Chaos: killing {driver}");
                kernel.KillDriverHost(driver);
            }
        }
    }
}
