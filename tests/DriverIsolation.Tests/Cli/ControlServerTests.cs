using System.IO.Pipes;
using DriverIsolation.Cli.Control;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// A real <see cref="ControlServer"/> on this process's control pipe, and real clients. In the
/// processes collection: no other test serves (or looks for serving kernels) meanwhile.
/// </summary>
[Collection("processes")]
public sealed class ControlServerTests
{
    [Fact]
    public Task AClientRightAfterOneThatHungUpAtOnce_IsAnswered_AndThePipeIsGoneOnceTheServerStops() => Task.Run(async () =>
    {
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = null, WarmPoolSize = 0 });
        var name = ControlPipe.NameFor(Environment.ProcessId);
        var file = Path.Combine(Path.GetTempPath(), $"CoreFxPipe_{name}");
        using var stop = new CancellationTokenSource();
        Task running;
        using (var server = new ControlServer(kernel))
        {
            running = server.RunAsync(stop.Token);
            try
            {
                // A client that connects and leaves at once is served (and dropped) at once; the
                // pipe must still be listening for the next one, right after.
                for (var round = 0; round < 50; round++)
                {
                    await using (var probe = new NamedPipeClientStream(".", name, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly))
                    {
                        await probe.ConnectAsync(5000).Bounded();
                    }

                    var response = await ControlClient.SendAsync(Environment.ProcessId, new ControlRequest("drivers")).Bounded();
                    Assert.True(response.Ok, $"round {round}: {response.Error}");
                    Assert.NotNull(response.Drivers);
                }
            }
            finally
            {
                await stop.CancelAsync();
                await running.Bounded();
            }
        }

        // Its last listening instance is gone with it: no socket file left to be taken for a kernel.
        Assert.False(File.Exists(file), $"{file} is left behind");
    });
}
