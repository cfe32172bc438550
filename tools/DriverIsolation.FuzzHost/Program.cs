using System.Globalization;
using System.IO.Pipes;
using DriverIsolation;
using DriverIsolation.FuzzHost;
using DriverIsolation.Protocol;

// fuzzhost --pipe <name> --parent-pid <pid> --name <host>: started by the kernel exactly as drvhost
// is (the token on standard input). It completes the handshake honestly, then answers whatever
// the kernel sends with messages drawn by a seeded generator (see FuzzGenerator), and sends
// unsolicited ones between. The driver parameter "seed" and this process's ID give the session
// seed, which is the first thing it logs, so a session can be told apart in the kernel's log.
string pipeName = "";
var parentPid = 0;
for (var i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--pipe": pipeName = args[i + 1]; break;
        case "--parent-pid": parentPid = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
    }
}

var token = Convert.FromHexString((await Console.In.ReadLineAsync())!.Trim());
using var pipe = new NamedPipeClientStream(".", pipeName, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
await pipe.ConnectAsync(30_000);
await using var connection = new FrameConnection(pipe, untrustedPeer: false);
connection.Send(new Hello(ProtocolConstants.Version, token, Environment.ProcessId));
if (await connection.ReadAsync() is not Welcome)
{
    return 4;
}

// The kernel's death closes the pipe, which ends the loop below; a kernel killed outright is
// caught here too.
_ = Task.Run(async () =>
{
    while (true)
    {
        await Task.Delay(500);
        try
        {
            using var parent = System.Diagnostics.Process.GetProcessById(parentPid);
        }
        catch (ArgumentException)
        {
            Environment.Exit(3);
        }
    }
});

FuzzGenerator? fuzz = null;
while (await connection.ReadAsync() is { } message)
{
    if (message is LoadDriver load)
    {
        var seed = load.Parameters.TryGetValue("seed", out var text) ? int.Parse(text, CultureInfo.InvariantCulture) : 0;
        var sessionSeed = HashCode.Combine(seed, Environment.ProcessId);
        fuzz = new FuzzGenerator(sessionSeed, load.DriverId);
        connection.Send(new Log(load.DriverId, 2, $"fuzz session {sessionSeed}"));
        connection.Send(new DriverLoaded(load.DriverId, NtStatus.Success, null));
        continue;
    }

    if (message is Shutdown)
    {
        return 0;
    }

    if (fuzz is null)
    {
        continue;
    }

    foreach (var output in fuzz.Answer(message))
    {
        if (output.Raw is { } raw)
        {
            await pipe.WriteAsync(raw);
            await pipe.FlushAsync();
        }
        else if (!connection.Send(output.Message!))
        {
            return 0;
        }
    }
}

return 0;
