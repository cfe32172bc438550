using System.Buffers.Binary;
using System.Globalization;
using System.IO.Pipes;
using DriverIsolation;
using DriverIsolation.Protocol;

// hostilehost --pipe <name> --parent-pid <pid> --name <attack>: started by the kernel exactly as
// drvhost is (token on stdin), it then attacks according to its name (see Attack below).
string pipeName = "", attack = "";
for (var i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--pipe": pipeName = args[i + 1]; break;
        case "--name": attack = args[i + 1]; break;
    }
}

var token = Convert.FromHexString((await Console.In.ReadLineAsync())!.Trim());
var pipe = new NamedPipeClientStream(".", pipeName, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
await pipe.ConnectAsync(30_000);

switch (attack)
{
    case "silent":
        // Connects and never says a word.
        await UntilClosedAsync(pipe);
        return 0;
    case "wrong-token":
        await RawAsync(pipe, FrameCodec.Encode(new Hello(ProtocolConstants.Version, new byte[token.Length], Environment.ProcessId)));
        await UntilClosedAsync(pipe);
        return 0;
    case "wrong-pid":
        await RawAsync(pipe, FrameCodec.Encode(new Hello(ProtocolConstants.Version, token, Environment.ProcessId + 1)));
        await UntilClosedAsync(pipe);
        return 0;
}

await using var connection = new FrameConnection(pipe, untrustedPeer: false);
connection.Send(new Hello(ProtocolConstants.Version, token, Environment.ProcessId));
if (await connection.ReadAsync() is not Welcome)
{
    return 4;
}

if (attack == "second-connection")
{
    // Replays its own token on a second connection to its pipe.
    var second = new NamedPipeClientStream(".", pipeName, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
    await second.ConnectAsync(30_000);
    await using var replay = new FrameConnection(second, untrustedPeer: false);
    replay.Send(new Hello(ProtocolConstants.Version, token, Environment.ProcessId));
    await replay.ReadAsync();
}

while (await connection.ReadAsync() is { } message)
{
    switch (message)
    {
        case LoadDriver when attack == "ring-garbage" && connection.UsesRing:
            // Bytes that are no message, as a record of the shared-memory ring.
            connection.SendRaw("this is no message"u8);
            break;
        case LoadDriver when attack == "ring-doorbell-in-ring" && connection.UsesRing:
            connection.Send(new RingDoorbell(0));
            break;
        case LoadDriver load when attack == "garbage":
            await RawAsync(pipe, [0x10, 0x00, 0x00, 0x00, .. "this is no frame"u8]);
            break;
        case LoadDriver when attack == "oversized":
            var header = new byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(header, 0x7FFF_FFFF);
            await RawAsync(pipe, header);
            break;
        case LoadDriver when attack == "truncated":
            var frame = FrameCodec.Encode(new Log(1, 2, "a frame that is cut in half"));
            await RawAsync(pipe, frame[..(frame.Length / 2)]);
            return 0;
        case LoadDriver when attack == "hello-again":
            connection.Send(new Hello(ProtocolConstants.Version, token, Environment.ProcessId));
            break;
        case LoadDriver load when attack == "unasked-answer":
            connection.Send(new DriverLoaded(load.DriverId + 1000, NtStatus.Success, null));
            break;
        case LoadDriver load:
            connection.Send(new DriverLoaded(load.DriverId, NtStatus.Success, null));
            break;
        case AddDevice add:
            connection.Send(new DeviceAdded(add.DeviceId, NtStatus.Success, null));
            switch (attack)
            {
                case "dma-outside-window" when add.Hardware is { } hardware:
                    // The page just past the end of its own window.
                    connection.Send(new DmaMap(add.DeviceId, hardware.WindowBytes / 4096, 1, DmaAccess.ReadWrite));
                    break;
                case "dma-other-device":
                    // The device added just before this one belongs to another driver.
                    connection.Send(new DmaMap(add.DeviceId - 1, 0, 1, DmaAccess.ReadWrite));
                    break;
                case "register-other-device":
                    connection.Send(new RegisterWrite(add.DeviceId - 1, 0, 0x1000));
                    break;
                case "dma-bad-access":
                    connection.Send(new DmaMap(add.DeviceId, 0, 1, (DmaAccess)0x41));
                    break;
            }

            break;
        case Dispatch d when attack == "other-device":
            // Names a device that is not the one the IRP was sent to, then completes honestly.
            connection.Send(new Complete(d.IrpId, d.DeviceId + 1000, NtStatus.Success, d.OutputLength, new byte[d.OutputLength]));
            connection.Send(new Complete(d.IrpId, d.DeviceId, NtStatus.Success, d.OutputLength, Enumerable.Repeat((byte)0x42, d.OutputLength).ToArray()));
            break;
        case Dispatch { TraceParent: not null } d when attack == "forged-spans":
            // Spans for an IRP it does not hold, for another device, and from before the IRP
            // existed; then its honest span and completion.
            var now = System.Diagnostics.Stopwatch.GetTimestamp();
            connection.Send(new HostSpan(d.IrpId + 1000, d.DeviceId, "forged: unknown IRP", "00000000000000aa", now, 0, 0, now, "forged"));
            connection.Send(new HostSpan(d.IrpId, d.DeviceId + 1000, "forged: other device", "00000000000000bb", now, 0, 0, now, "forged"));
            connection.Send(new HostSpan(d.IrpId, d.DeviceId, "forged: before the IRP", "00000000000000cc", 1, 0, 0, now, "forged"));
            connection.Send(new HostSpan(d.IrpId, d.DeviceId, "honest", "00000000000000dd", now, 0, 0, System.Diagnostics.Stopwatch.GetTimestamp(), "completed with Success"));
            connection.Send(new Complete(d.IrpId, d.DeviceId, NtStatus.Success, 0, ReadOnlyMemory<byte>.Empty));
            break;
        case Dispatch d when attack == "bad-status":
            // A status that is no status, then the honest completion.
            connection.Send(new Complete(d.IrpId, d.DeviceId, (NtStatus)0x12345678, 0, ReadOnlyMemory<byte>.Empty));
            connection.Send(new Complete(d.IrpId, d.DeviceId, NtStatus.Success, d.OutputLength, Enumerable.Repeat((byte)0x42, d.OutputLength).ToArray()));
            break;
        case Dispatch d when attack == "overstate" && d.MajorFunction == MajorFunction.Read:
            // Returns more data than the buffer holds.
            connection.Send(new Complete(d.IrpId, d.DeviceId, NtStatus.Success, d.OutputLength, new byte[d.OutputLength + 16]));
            break;
        case Dispatch d:
            connection.Send(new Complete(d.IrpId, d.DeviceId, NtStatus.Success, 0, ReadOnlyMemory<byte>.Empty));
            break;
        case Ping ping:
            connection.Send(new Pong(ping.Sequence, Environment.WorkingSet, GC.GetTotalAllocatedBytes()));
            break;
        case Shutdown:
            return 0;
    }
}

return 0;

static async Task RawAsync(Stream stream, byte[] bytes)
{
    await stream.WriteAsync(bytes);
    await stream.FlushAsync();
}

// Stays until the kernel drops the connection (or kills the process): whatever it sends is ignored.
static async Task UntilClosedAsync(Stream pipe)
{
    var buffer = new byte[4096];
    try
    {
        while (await pipe.ReadAsync(buffer) > 0)
        {
        }
    }
    catch (IOException)
    {
        // The kernel closed it.
    }
}
