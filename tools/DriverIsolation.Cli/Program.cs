using System.CommandLine;
using DriverIsolation.Cli.Commands;
using DriverIsolation.DriverHost;
using DriverIsolation.Kernel;
using Spectre.Console;

var otlp = new Option<string?>("--otlp")
{
    Description = $"Export traces and metrics over OTLP (HTTP/protobuf) to this collector, e.g. http://localhost:4318 (or set {OtlpExport.EndpointVariable}); the hosts export their own spans",
    Recursive = true,
};
otlp.Validators.Add(r =>
{
    if (r.GetValue(otlp) is { } text && !(Uri.TryCreate(text, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https"))
    {
        r.AddError($"--otlp: expected a collector's http(s) address like http://localhost:4318; got \"{text}\"");
    }
});

var root = new RootCommand("drviso: a simulated microkernel whose drivers run in isolated host processes")
{
    DemoCommand.Create(),
    ChaosCommand.Create(),
    FuzzCommand.Create(),
    BenchCommand.Create(),
    CampaignCommands.CreateRun(),
    CampaignCommands.CreateMerge(),
    CampaignCommands.CreateTrial(),
    ServeCommand.Create(),
    TraceCommand.Create(),
    TopCommand.Create(),
    DriversCommand.CreateDrivers(),
    DriversCommand.CreateQuarantine(),
    DriversCommand.CreateInject(),
};
root.Options.Add(otlp);

// Tables printed to a file or a pipe (a campaign's log, CI) keep each row on one line: without a
// terminal Spectre.Console assumes 80 columns and wraps cells, "unhandled-exception" into three.
if (Console.IsOutputRedirected)
{
    AnsiConsole.Profile.Width = 240;
}

var parse = root.Parse(args);
if (parse.Errors.Count == 0 && parse.GetValue(otlp) is { } endpoint)
{
    // Inherited by every process this one starts: hosts and campaign trials export too.
    Environment.SetEnvironmentVariable(OtlpExport.EndpointVariable, endpoint);
}

using var telemetry = OtlpExport.FromEnvironment($"drviso {parse.CommandResult.Command.Name}", [KernelMetrics.MeterName], [KernelMetrics.MeterName]);
return await parse.InvokeAsync();
