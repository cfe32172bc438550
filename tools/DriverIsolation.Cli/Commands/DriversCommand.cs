using System.CommandLine;
using System.Globalization;
using DriverIsolation.Cli.Control;
using Spectre.Console;

namespace DriverIsolation.Cli.Commands;

/// <summary><c>drviso drivers</c>, <c>drviso quarantine list|enable</c> and <c>drviso inject</c>:
/// the control pipe of a serving kernel, from the command line.</summary>
internal static class DriversCommand
{
    public static Command CreateDrivers()
    {
        var kernel = KernelOption();
        var command = new Command("drivers", "List a serving kernel's drivers: state, host PID, restarts") { kernel };
        command.SetAction((parse, _) => RequestAsync(parse.GetValue(kernel), new ControlRequest("drivers"), r => Print(r.Drivers!, r.SafeMode)));
        return command;
    }

    public static Command CreateQuarantine()
    {
        var listKernel = KernelOption();
        var list = new Command("list", "List the quarantined drivers") { listKernel };
        list.SetAction((parse, _) => RequestAsync(parse.GetValue(listKernel), new ControlRequest("drivers"),
            r => Print([.. r.Drivers!.Where(d => d.State == "Quarantined")], r.SafeMode)));

        var enableKernel = KernelOption();
        var driver = new Argument<string>("driver") { Description = "The quarantined driver to enable again" };
        var enable = new Command("enable", "Enable a quarantined driver again (it restarts with a clean failure record)") { driver, enableKernel };
        enable.SetAction((parse, _) => RequestAsync(parse.GetValue(enableKernel), new ControlRequest("reenable", parse.GetValue(driver)),
            _ => AnsiConsole.MarkupLine($"{parse.GetValue(driver).EscapeMarkup()} re-enabled; it restarts now.")));

        return new Command("quarantine", "Drivers the watchdog disabled after too many failures") { list, enable };
    }

    public static Command CreateInject()
    {
        var kernel = KernelOption();
        var driver = new Argument<string>("driver") { Description = "The driver to break" };
        var fault = new Argument<string>("fault")
        {
            HelpName = "fault",
            Description = $"What to do to it: kill (SIGKILL its host), or one of the fault shim's faults, armed to fire on its next request: {string.Join(", ", DriverHost.FaultTypes.All)}",
        };
        fault.AcceptOnlyFromAmong(["kill", .. DriverHost.FaultTypes.All]);
        var parameters = new Option<string[]>("--param")
        {
            Description = "A fault parameter, name=value (device=VNic0 for wild-dma-other-driver, delayMs=3000 for slow-completion); repeatable",
        };
        parameters.Validators.Add(r =>
        {
            foreach (var p in r.GetValue(parameters) ?? [])
            {
                if (p.IndexOf('=', StringComparison.Ordinal) <= 0)
                {
                    r.AddError($"--param: expected name=value; got \"{p}\"");
                }
            }
        });
        var command = new Command("inject", "Break a driver of a serving kernel by hand, to watch the watchdog and the IOMMU act") { driver, fault, parameters, kernel };
        command.SetAction((parse, _) => RequestAsync(parse.GetValue(kernel), new ControlRequest("inject", parse.GetValue(driver), parse.GetValue(fault),
                (parse.GetValue(parameters) ?? []).Select(p => p.Split('=', 2)).ToDictionary(p => p[0], p => p[1], StringComparer.Ordinal)),
            r => Console.WriteLine($"{r.Detail ?? "done"}.")));
        return command;
    }

    public static void Print(IReadOnlyList<ControlDriver> drivers, string? safeMode)
    {
        var table = new Table().Border(TableBorder.Rounded).AddColumn("Driver").AddColumn("State").AddColumn("Isolation")
            .AddColumn(new TableColumn("Host PID").RightAligned()).AddColumn(new TableColumn("Restarts").RightAligned()).AddColumn("Last failure");
        foreach (var d in drivers)
        {
            table.AddRow(d.Name.EscapeMarkup(), d.State, d.Isolation, d.ProcessId.ToString(CultureInfo.InvariantCulture),
                d.Restarts.ToString(CultureInfo.InvariantCulture), (d.Failure ?? "").EscapeMarkup());
        }

        AnsiConsole.Write(table);
        if (safeMode is not null)
        {
            AnsiConsole.MarkupLine($"[red]SAFE MODE[/]: {safeMode.EscapeMarkup()}");
        }
    }

    private static Option<int?> KernelOption() => new("--kernel") { Description = "PID of the serving kernel (default: the only one serving)" };

    private static async Task<int> RequestAsync(int? kernelPid, ControlRequest request, Action<ControlResponse> show)
    {
        try
        {
            var response = await ControlClient.SendAsync(ControlClient.ResolveKernel(kernelPid), request).ConfigureAwait(false);
            if (!response.Ok)
            {
                await Console.Error.WriteLineAsync($"drviso: {response.Error}").ConfigureAwait(false);
                return 1;
            }

            show(response);
            return 0;
        }
        catch (InvalidOperationException ex)
        {
            await Console.Error.WriteLineAsync($"drviso: {ex.Message}").ConfigureAwait(false);
            return 1;
        }
    }
}
