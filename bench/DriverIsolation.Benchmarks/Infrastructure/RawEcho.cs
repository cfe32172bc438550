using System.Diagnostics;
using System.Globalization;
using System.IO.Pipes;
using DriverIsolation.Kernel;
using DriverIsolation.Protocol;

namespace DriverIsolation.Benchmarks.Infrastructure;

/// <summary>
/// The raw transport under the process model: <c>drvhost --echo</c> (the same process image, the
/// same pipe, the same framing and message sizes as a real host, no kernel, no handshake, no IRP)
/// on a pipe this process serves, optionally switched to the shared-memory rings the ring
/// transport uses. The same baseline as <c>drviso bench</c>'s raw_pipe and raw_shm.
/// </summary>
internal sealed class RawEcho : IAsyncDisposable
{
    private readonly NamedPipeServerStream _server;
    private readonly Process _peer;
    private readonly FrameConnection _connection;
    private long _nextId;

    private RawEcho(NamedPipeServerStream server, Process peer, FrameConnection connection)
    {
        _server = server;
        _peer = peer;
        _connection = connection;
    }

    public static async Task<RawEcho> StartAsync(bool ring)
    {
        var name = $"drviso-bdn-{Environment.ProcessId}-{Guid.NewGuid():N}";
        var server = new NamedPipeServerStream(name, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        var peer = Process.Start(DriverHostExecutable.StartInfo(null,
            ["--echo", "--pipe", name, "--parent-pid", Environment.ProcessId.ToString(CultureInfo.InvariantCulture)]))
            ?? throw new InvalidOperationException("drvhost --echo did not start");
        try
        {
            await server.WaitForConnectionAsync().WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }
        catch
        {
            ProcessTree.Kill(peer);
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }

        var connection = new FrameConnection(server, untrustedPeer: true, borrowPayloads: true);
        var echo = new RawEcho(server, peer, connection);
        if (ring)
        {
            var defaults = new KernelOptions();
            var directory = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
            if (!connection.OfferRing(directory, defaults.RingCapacityBytes, defaults.RingSpin))
            {
                await echo.DisposeAsync().ConfigureAwait(false);
                throw new InvalidOperationException("the echo peer's connection closed before the rings were offered");
            }
        }

        // A first exchange: the peer is up, and on the ring it has mapped the rings.
        await echo.RoundTripAsync(new byte[1]).ConfigureAwait(false);
        if (ring != connection.UsesRing)
        {
            await echo.DisposeAsync().ConfigureAwait(false);
            throw new InvalidOperationException("the echo peer is not on the rings");
        }

        return echo;
    }

    /// <summary>One Read-shaped Dispatch answered by a Complete carrying the buffer's length in
    /// bytes, copied into the buffer as the kernel copies a Read's data to its caller.</summary>
    public async Task<IoResult> RoundTripAsync(Memory<byte> buffer)
    {
        Send(buffer.Length);
        var reply = await ReceiveAsync().ConfigureAwait(false);
        reply.Data.Span.CopyTo(buffer.Span);
        return new IoResult(reply.Status, reply.Information);
    }

    /// <summary><paramref name="requests"/> Reads of <paramref name="payload"/> bytes with
    /// <paramref name="depth"/> of them in flight on the one connection.</summary>
    public async Task PipelinedAsync(int depth, int requests, int payload)
    {
        var sent = 0;
        for (; sent < Math.Min(depth, requests); sent++)
        {
            Send(payload);
        }

        for (var received = 0; received < requests; received++)
        {
            await ReceiveAsync().ConfigureAwait(false);
            if (sent < requests)
            {
                Send(payload);
                sent++;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        ProcessTree.Kill(_peer);
        await _connection.DisposeAsync().ConfigureAwait(false);
        await _server.DisposeAsync().ConfigureAwait(false);
        _peer.Dispose();
    }

    private void Send(int payload)
    {
        if (!_connection.Send(new DispatchBody(++_nextId, 1, MajorFunction.Read, 0, 1, 0, payload, 0, ReadOnlyMemory<byte>.Empty, payload)))
        {
            throw new InvalidOperationException($"the echo peer's connection is closed: {_connection.CloseReason}");
        }
    }

    // Read as the kernel reads a host's completions (one reused object, the data borrowed until
    // the next read).
    private async ValueTask<ReceivedComplete> ReceiveAsync() =>
        await _connection.ReadAsync().ConfigureAwait(false) as ReceivedComplete
            ?? throw new InvalidOperationException($"the echo peer did not answer with a Complete: {_connection.CloseReason}");
}
