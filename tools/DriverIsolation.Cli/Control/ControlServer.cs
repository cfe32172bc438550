using System.IO.Pipes;
using System.Text.Json;
using DriverIsolation.Kernel;

namespace DriverIsolation.Cli.Control;

/// <summary>Answers control requests for one kernel until cancelled. A bad request gets an error
/// response, never takes the server (or the kernel) down.</summary>
internal sealed class ControlServer(Microkernel kernel, LiveStatistics? statistics = null) : IDisposable
{
    private static readonly string Name = ControlPipe.NameFor(Microkernel.ProcessId);

    // Listening from construction on: whoever is told the kernel serves can connect at once.
    private NamedPipeServerStream? _first = Listen();

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        var pipe = Interlocked.Exchange(ref _first, null) ?? Listen();
        while (true)
        {
            try
            {
                await pipe.WaitForConnectionAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                await pipe.DisposeAsync().ConfigureAwait(false);
                return;
            }

            // The next instance listens before this connection is served: on Unix the instances
            // share one socket, closed with the last of them, and a connection answered (or
            // dropped by its client) at once would otherwise take it down for a moment, and a
            // client connecting then would be refused or reset.
            var next = Listen();
            _ = ServeAsync(pipe);
            pipe = next;
        }
    }

    /// <summary>Stops listening if <see cref="RunAsync"/> never took the first connection.</summary>
    public void Dispose() => Interlocked.Exchange(ref _first, null)?.Dispose();

    private static NamedPipeServerStream Listen() =>
        new(Name, PipeDirection.InOut, NamedPipeServerStream.MaxAllowedServerInstances,
            PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);

    private async Task ServeAsync(NamedPipeServerStream pipe)
    {
        await using (pipe.ConfigureAwait(false))
        {
            using var reader = new StreamReader(pipe, leaveOpen: true);
            var writer = new StreamWriter(pipe, leaveOpen: true) { AutoFlush = true };
            await using (writer.ConfigureAwait(false))
            {
                ControlResponse response;
                try
                {
                    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                    var line = await reader.ReadLineAsync(timeout.Token).ConfigureAwait(false);
                    var request = line is null ? null : JsonSerializer.Deserialize<ControlRequest>(line);
                    response = request is null ? new ControlResponse(false, "empty request") : Handle(request);
                }
                catch (Exception ex) when (ex is JsonException or OperationCanceledException or IOException)
                {
                    response = new ControlResponse(false, $"bad request: {ex.Message}");
                }

                try
                {
                    await writer.WriteLineAsync(JsonSerializer.Serialize(response)).ConfigureAwait(false);
                }
                catch (IOException)
                {
                    // The client went away: nothing to answer.
                }
            }
        }
    }

    private ControlResponse Handle(ControlRequest request)
    {
        try
        {
            switch (request.Op)
            {
                case "drivers":
                    return Drivers();
                case "reenable" when request.Driver is { } driver:
                    kernel.Reenable(driver);
                    return Drivers();
                case "kill" when request.Driver is { } driver:
                    kernel.KillDriverHost(driver);
                    return new ControlResponse(true);
                case "inject" when request.Driver is { } driver && request.Fault is { } fault:
                    return new ControlResponse(true, Detail: kernel.InjectFault(driver, fault, request.Parameters));
                case "stats" when statistics is not null:
                    return Drivers() with
                    {
                        Devices = statistics.Devices(kernel),
                        Events = statistics.Events(),
                        InFlight = kernel.Metrics.InFlight,
                        Iommu = kernel.GetIommu() is { } iommu ? iommu.Mode.ToString().ToLowerInvariant() : "none",
                        AtMilliseconds = Environment.TickCount64,
                    };
                default:
                    return new ControlResponse(false, $"unknown request \"{request.Op}\" (expected drivers, stats, reenable, kill, inject; reenable, kill and inject name a driver, inject a fault)");
            }
        }
        catch (Exception ex) when (ex is KeyNotFoundException or InvalidOperationException or ArgumentException)
        {
            return new ControlResponse(false, ex.Message);
        }
    }

    private ControlResponse Drivers() => new(true, Drivers:
        [.. kernel.GetDrivers().Select(d => new ControlDriver(d.Name, d.State.ToString(), d.Isolation.ToManifestName(), d.ProcessId, d.Restarts, d.Failure,
            d.Isolation == IsolationModel.InKernel ? "direct" : d.Transport.ToString().ToLowerInvariant()))],
        SafeMode: kernel.SafeModeReason);
}
