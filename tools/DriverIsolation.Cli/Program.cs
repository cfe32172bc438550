using System.CommandLine;
using DriverIsolation.Cli.Commands;

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
return await root.Parse(args).InvokeAsync();
