using System.Globalization;
using System.IO.Pipes;
using DriverIsolation.DriverHost;
using DriverIsolation.Protocol;

// drvhost --pipe <name> --parent-pid <pid> [--name <host name>] [--dispatch inline|pool] [--stall-ms <ms>] [--rehearse]
// The one-time token arrives on standard input (hex, one line), never on the command line.
string? pipeName = null;
string hostName = "drvhost";
var parentPid = -1;
var dispatch = HostDispatch.Pool;
TimeSpan? stall = null;
var echo = args.Contains("--echo");
var rehearse = args.Contains("--rehearse");
args = [.. args.Where(a => a is not "--echo" and not "--rehearse")];
for (var i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--pipe": pipeName = args[i + 1]; break;
        case "--parent-pid": parentPid = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
        case "--name": hostName = args[i + 1]; break;
        case "--dispatch" when Enum.TryParse<HostDispatch>(args[i + 1], ignoreCase: true, out var mode): dispatch = mode; break;
        case "--stall-ms" when int.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var ms) && ms > 0: stall = TimeSpan.FromMilliseconds(ms); break;
        default:
            await Console.Error.WriteLineAsync($"drvhost: unknown option or bad value: {args[i]} {args[i + 1]}");
            return ExitCodes.Usage;
    }
}

if (pipeName is null || parentPid <= 0)
{
    await Console.Error.WriteLineAsync("usage: drvhost --pipe <name> --parent-pid <pid> [--name <host name>] [--dispatch inline|pool] [--stall-ms <ms>] [--rehearse] [--echo]  (token on stdin)");
    return ExitCodes.Usage;
}

if (echo)
{
    // The benchmark baseline: no handshake, no runtime (see EchoPeer).
    var echoPipe = new NamedPipeClientStream(".", pipeName, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
    await echoPipe.ConnectAsync(30_000);
    await using var echoConnection = new FrameConnection(echoPipe, untrustedPeer: false, reuseDispatch: true);
    return await EchoPeer.RunAsync(echoConnection);
}

var tokenLine = await Console.In.ReadLineAsync();
byte[] token;
try
{
    token = Convert.FromHexString(tokenLine?.Trim() ?? string.Empty);
}
catch (FormatException)
{
    await Console.Error.WriteLineAsync("drvhost: the token on standard input is not hex");
    return ExitCodes.Usage;
}

// Its own spans to the kernel's collector, when the kernel exports (drviso --otlp).
using var telemetry = OtlpExport.FromEnvironment($"drvhost {hostName}", [HostServer.ActivitySourceName], []);

// Compile the host's paths now, so the first real driver does not pay for it (see HostWarmup).
HostWarmup.Run();

// A warm-pool host also rehearses a restart's messages on a pipe of its own (see HostRehearsal).
RehearsalResult? rehearsal = null;
if (rehearse)
{
    try
    {
        rehearsal = await HostRehearsal.RunAsync(dispatch, stall, TimeSpan.FromSeconds(20));
    }
    catch (Exception ex) when (ex is InvalidOperationException or IOException or OperationCanceledException or ProtocolException or UnauthorizedAccessException)
    {
        // Only slower without it.
        await Console.Error.WriteLineAsync($"drvhost {hostName}: the rehearsal failed: {ex.Message}");
    }
}

using var stop = new CancellationTokenSource();
var parentGone = ParentWatch.WaitForParentExitAsync(parentPid, TimeSpan.FromMilliseconds(250), stop.Token);

var pipe = new NamedPipeClientStream(".", pipeName, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
try
{
    await pipe.ConnectAsync(TimeSpan.FromSeconds(30), stop.Token);
}
catch (Exception ex) when (ex is TimeoutException or IOException or UnauthorizedAccessException)
{
    await Console.Error.WriteLineAsync($"drvhost {hostName}: cannot connect to pipe {pipeName}: {ex.Message}");
    return ExitCodes.ConnectFailed;
}

var connection = new FrameConnection(pipe, untrustedPeer: false, reuseDispatch: true);
var server = new HostServer(connection, hostName, dispatch: dispatch, inlineStall: stall);
var serving = server.RunAsync(token, stop.Token);
if (rehearsal is { } rehearsed)
{
    // After the Hello that RunAsync has sent: the kernel logs it under this host's name.
    connection.Send(new Log(0, (int)Microsoft.Extensions.Logging.LogLevel.Debug,
        $"rehearsed a restart before connecting: {rehearsed.Requests} requests served in {rehearsed.Elapsed.TotalMilliseconds:F0} ms"));
}
var first = await Task.WhenAny(serving, parentGone);
if (first == parentGone)
{
    // The kernel is gone: nothing here is worth finishing, and a driver may be stuck.
    await Console.Error.WriteLineAsync($"drvhost {hostName}: kernel process {parentPid} is gone; exiting");
    return ExitCodes.KernelGone;
}

int exitCode;
try
{
    exitCode = await serving;
}
catch (ProtocolException ex)
{
    await Console.Error.WriteLineAsync($"drvhost {hostName}: {ex.Message}");
    exitCode = ExitCodes.ProtocolError;
}

await stop.CancelAsync();
await connection.DisposeAsync();
return exitCode;
