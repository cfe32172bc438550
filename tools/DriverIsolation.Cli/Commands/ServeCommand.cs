using System.CommandLine;
using DriverIsolation.Cli.Control;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso serve</c>: boot a kernel and keep it running, answering on its control pipe
/// (<c>drviso drivers</c>, <c>drviso quarantine</c>, <c>drviso inject</c>) until Ctrl+C or SIGTERM.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var manifests = new Option<DirectoryInfo?>("--manifests") { Description = "A folder of driver manifests (*.json); default: the sample drivers" };
        var isolation = new Option<string?>("--isolation") { Description = "Run every driver in this model: in-kernel, shared-host or process" };
        isolation.AcceptOnlyFromAmong("in-kernel", "shared-host", "process");
        var verbose = new Option<bool>("--verbose") { Description = "Show the kernel's log" };
        var command = new Command("serve", "Boot a kernel and keep it running; manage it with drviso drivers / quarantine / inject")
        {
            manifests, isolation, verbose,
        };
        command.SetAction((parse, ct) => RunAsync(parse.GetValue(manifests), parse.GetValue(isolation), parse.GetValue(verbose), ct));
        return command;
    }

    private static async Task<int> RunAsync(DirectoryInfo? folder, string? isolation, bool verbose, CancellationToken stop)
    {
        IReadOnlyList<DriverManifest> manifests;
        try
        {
            manifests = folder is null
                ? EmbeddedManifests.Samples()
                : [.. folder.EnumerateFiles("*.json").OrderBy(f => f.Name, StringComparer.Ordinal).Select(f => ManifestLoader.LoadFile(f.FullName))];
        }
        catch (Exception ex) when (ex is ManifestException or DirectoryNotFoundException)
        {
            await Console.Error.WriteLineAsync($"drviso serve: {ex.Message}").ConfigureAwait(false);
            return 2;
        }

        using var loggerFactory = LoggerFactory.Create(b => b
            .AddSimpleConsole(o => o.SingleLine = true)
            .SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.Warning));
        await using var kernel = new Microkernel(new KernelOptions(), loggerFactory);
        try
        {
            await kernel.StartAsync(manifests, isolation is null ? null : IsolationModels.Parse(isolation), stop).ConfigureAwait(false);
        }
        catch (ManifestException ex)
        {
            await Console.Error.WriteLineAsync($"drviso serve: {ex.Message}").ConfigureAwait(false);
            return 2;
        }

        AnsiConsole.MarkupLine($"serving: kernel PID {Microkernel.ProcessId}; control pipe {ControlPipe.NameFor(Microkernel.ProcessId)}");
        DriversCommand.Print(kernel.GetDrivers().Select(d => new ControlDriver(d.Name, d.State.ToString(), d.Isolation.ToManifestName(), d.ProcessId, d.Restarts, d.Failure)).ToList(), kernel.SafeModeReason);
        AnsiConsole.MarkupLine("Ctrl+C stops the kernel.");
        try
        {
            await new ControlServer(kernel).RunAsync(stop).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Stopped.
        }

        return 0;
    }
}
