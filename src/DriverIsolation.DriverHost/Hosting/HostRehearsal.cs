using System.Diagnostics;
using System.IO.Pipes;
using System.Security.Cryptography;
using DriverIsolation.Protocol;

namespace DriverIsolation.DriverHost;

/// <summary>
/// A warm-pool host rehearses before it connects: a <see cref="HostServer"/> of its own, on a real
/// named pipe inside this process, serves a stand-in kernel the messages a restart sends, in the
/// order it sends them (the handshake, a heartbeat, a driver loaded from an assembly file, a
/// device added, then requests of every major function, read from the pipe as the host reads the
/// kernel's), and shuts down. So when the host is taken for a restart, the code on that path has
/// been compiled already, and the requests that follow run the host's side of the hot path after
/// the runtime recompiled it with optimizations.
/// <para>
/// <see cref="HostWarmup"/> runs every message through the serializer and a driver through the
/// runtime, but not the server, its pipe or its dispatch: that was most of what a restarted host
/// still compiled (76 methods, 12 ms of CPU between the load and the replayed Create). What is
/// left is the driver's own code, which only its load can compile (or
/// <see cref="Protocol.PrepareDriver"/>, ahead of time).
/// </para>
/// </summary>
public static class HostRehearsal
{
    /// <summary>Requests per major function: enough that the request path is called past the
    /// runtime's threshold for recompiling it with optimizations (30 calls).</summary>
    public const int Rounds = 40;

    private static readonly MajorFunction[] Majors =
        [MajorFunction.Create, MajorFunction.Read, MajorFunction.Write, MajorFunction.DeviceControl, MajorFunction.FlushBuffers, MajorFunction.Cleanup, MajorFunction.Close];

    private const int DriverId = 1;
    private const int DeviceId = 1;
    private const int Payload = 512;

    /// <summary>Rehearses once; returns what was served, or throws if the rehearsal went wrong
    /// (the caller reports that and goes on: a host that did not rehearse is only slower).</summary>
    public static async Task<RehearsalResult> RunAsync(HostDispatch dispatch, TimeSpan? inlineStall, TimeSpan timeout)
    {
        var started = Stopwatch.GetTimestamp();
        using var deadline = new CancellationTokenSource(timeout);
        var pipeName = $"drvhost-rehearsal-{Environment.ProcessId}-{RandomNumberGenerator.GetHexString(16, lowercase: true)}";
        var kernelPipe = new NamedPipeServerStream(pipeName, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        var hostPipe = new NamedPipeClientStream(".", pipeName, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        await Task.WhenAll(kernelPipe.WaitForConnectionAsync(deadline.Token), hostPipe.ConnectAsync(deadline.Token)).ConfigureAwait(false);

        // Each end as the real one makes it: the kernel's borrows payloads, the host's reuses requests.
        await using var kernel = new FrameConnection(kernelPipe, untrustedPeer: true, borrowPayloads: true);
        await using var connection = new FrameConnection(hostPipe, untrustedPeer: false, reuseDispatch: true);
        var server = new HostServer(connection, "rehearsal", dispatch: dispatch, inlineStall: inlineStall);
        var serving = server.RunAsync(RandomNumberGenerator.GetBytes(ProtocolConstants.TokenLength), deadline.Token);

        await ExpectAsync<Hello>(kernel, deadline.Token).ConfigureAwait(false);
        kernel.Send(new Welcome(ProtocolConstants.Version, "rehearsal"));
        kernel.Send(new Ping(1));
        await ExpectAsync<Pong>(kernel, deadline.Token).ConfigureAwait(false);

        var parameters = new Dictionary<string, string>();
        // No type name, as in most manifests: the host finds the assembly's one public driver type.
        kernel.Send(new LoadDriver(DriverId, "rehearsal", typeof(HostRehearsal).Assembly.Location, null, parameters));
        var loaded = await ExpectAsync<DriverLoaded>(kernel, deadline.Token).ConfigureAwait(false);
        Check(loaded.Status.IsSuccess(), $"the load failed: {loaded.Detail ?? loaded.Status.ToString()}");
        kernel.Send(new AddDevice(DriverId, DeviceId, @"\Device\Rehearsal", DeviceType.Unknown, false, parameters));
        var added = await ExpectAsync<DeviceAdded>(kernel, deadline.Token).ConfigureAwait(false);
        Check(added.Status.IsSuccess(), $"AddDevice failed: {added.Detail ?? added.Status.ToString()}");

        var input = new byte[Payload];
        input.AsSpan().Fill(RehearsalDriver.Pattern);
        var irpId = 0L;
        var served = 0;
        for (var round = 0; round < Rounds; round++)
        {
            foreach (var major in Majors)
            {
                irpId++;
                var carriesInput = major is MajorFunction.Write or MajorFunction.DeviceControl;
                var outputLength = major is MajorFunction.Read or MajorFunction.DeviceControl ? Payload : 0;
                kernel.Send(new DispatchBody(irpId, DeviceId, major, 0, FileId: 1, Offset: 0, Length: Payload, IoControlCode: 0,
                    carriesInput ? input : ReadOnlyMemory<byte>.Empty, outputLength));
                var complete = await ExpectAsync<ReceivedComplete>(kernel, deadline.Token).ConfigureAwait(false);
                Check(complete.IrpId == irpId && complete.DeviceId == DeviceId && complete.Status == NtStatus.Success,
                    $"{major} {irpId} came back as {complete.Status} for IRP {complete.IrpId}");
                var expected = major is MajorFunction.Read or MajorFunction.Write or MajorFunction.DeviceControl ? Payload : 0;
                Check(complete.Information == expected && complete.Data.Length == outputLength,
                    $"{major} {irpId} returned {complete.Information} bytes of information and {complete.Data.Length} bytes of data, not {expected} and {outputLength}");
                Check(!complete.Data.Span.ContainsAnyExcept(RehearsalDriver.Pattern), $"{major} {irpId} returned data other than the driver's");
                served++;
            }
        }

        kernel.Send(new Shutdown("rehearsal over"));
        var exitCode = await serving.WaitAsync(deadline.Token).ConfigureAwait(false);
        Check(exitCode == ExitCodes.Shutdown, $"the rehearsal's server ended with {ExitCodes.Describe(exitCode)}");
        return new RehearsalResult(served, Stopwatch.GetElapsedTime(started));
    }

    private static async Task<T> ExpectAsync<T>(FrameConnection kernel, CancellationToken cancellationToken)
        where T : Message
    {
        var message = await kernel.ReadAsync(cancellationToken).ConfigureAwait(false);
        return message as T ?? throw new InvalidOperationException(
            $"rehearsal: expected {typeof(T).Name}, got {message?.GetType().Name ?? $"the end of the pipe ({kernel.CloseReason})"}");
    }

    private static void Check(bool condition, string failure)
    {
        if (!condition)
        {
            throw new InvalidOperationException($"rehearsal: {failure}");
        }
    }

    /// <summary>The rehearsal's driver, loaded from this assembly's file as a driver's is (the
    /// assembly's only public driver type, so the load finds it as it finds a manifest's): Read
    /// fills its buffer, Write takes its input (pending, cancelable, then completed), DeviceControl
    /// echoes, the rest succeed.</summary>
    public sealed class RehearsalDriver : IDriver
    {
        public const byte Pattern = 0x5a;

        public NtStatus DriverEntry(DriverObject driver)
        {
            driver.AddDevice = static (_, device) =>
            {
                device.Extension = new object();
                return NtStatus.Success;
            };
            driver[MajorFunction.Create] = Succeed;
            driver[MajorFunction.Close] = Succeed;
            driver[MajorFunction.Cleanup] = Succeed;
            driver[MajorFunction.FlushBuffers] = Succeed;
            driver[MajorFunction.Read] = static (_, irp) =>
            {
                irp.OutputBuffer.Span.Fill(Pattern);
                irp.Complete(NtStatus.Success, irp.OutputBuffer.Length);
                return NtStatus.Success;
            };
            driver[MajorFunction.Write] = static (_, irp) =>
            {
                irp.MarkPending();
                irp.MarkCancelable(static i => i.Complete(NtStatus.Cancelled));
                irp.UnmarkCancelable();
                irp.Complete(NtStatus.Success, irp.InputBuffer.Length);
                return NtStatus.Pending;
            };
            driver[MajorFunction.DeviceControl] = static (_, irp) =>
            {
                irp.InputBuffer.Span.CopyTo(irp.OutputBuffer.Span);
                irp.Complete(NtStatus.Success, irp.InputBuffer.Length);
                return NtStatus.Success;
            };
            return NtStatus.Success;
        }

        private static NtStatus Succeed(DeviceObject device, Irp irp)
        {
            irp.Complete(NtStatus.Success);
            return NtStatus.Success;
        }
    }
}

/// <summary>What a rehearsal served, and how long it took.</summary>
public readonly record struct RehearsalResult(int Requests, TimeSpan Elapsed);
