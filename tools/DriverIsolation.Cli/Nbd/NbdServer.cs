using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using DriverIsolation.Disk;
using DriverIsolation.Kernel;
using static DriverIsolation.Cli.Nbd.NbdProtocol;

namespace DriverIsolation.Cli.Nbd;

/// <summary>One block device offered over NBD: its name there, its device, its size.</summary>
internal sealed record NbdExport(string Name, string Device, long Size);

/// <summary>
/// Exports the kernel's block devices over the Network Block Device protocol: fixed newstyle
/// negotiation (EXPORT_NAME, LIST, INFO, GO, ABORT), then READ, WRITE, FLUSH, TRIM and DISC with
/// many requests in flight per connection and simple replies. Every NBD request becomes IRPs on a
/// handle to the device, through whatever drivers (and hosts) its stack has; statuses become NBD
/// error numbers. A client that breaks the protocol loses its connection, nothing else.
/// </summary>
internal sealed partial class NbdServer(Microkernel kernel, IPEndPoint endpoint, Action<string>? log = null, TimeSpan? clientTimeout = null) : IAsyncDisposable
{
    /// <summary>Largest request a client may send (the block-size info says so).</summary>
    public const int MaxRequest = 32 << 20;

    /// <summary>Each request is passed to the device in IRPs of at most this much.</summary>
    public const int Chunk = 256 << 10;

    private const int MaxInFlight = 64;
    private const int MaxOptionLength = 64 << 10;
    private readonly TcpListener _listener = new(endpoint);
    private readonly List<Task> _connections = [];
    private readonly CancellationTokenSource _closing = new();

    /// <summary>How long, by default, a client may leave the handshake unanswered or a reply
    /// untaken before it is hung up on.</summary>
    public static readonly TimeSpan DefaultClientTimeout = TimeSpan.FromSeconds(30);

    private readonly int _clientTimeoutMs = (int)Math.Clamp((clientTimeout ?? DefaultClientTimeout).TotalMilliseconds, 1, int.MaxValue);

    private long _takenByRingReader;
    private long _ringReaderAttachments;

    public IPEndPoint LocalEndpoint => (IPEndPoint)_listener.LocalEndpoint;

    /// <summary>How many requests, on all connections so far, a kernel's ring reader took (see
    /// <see cref="RequestIntake"/>); the rest were read by the connections' own threads.</summary>
    internal long TakenByRingReader => Interlocked.Read(ref _takenByRingReader);

    /// <summary>How many times a connection had a kernel's ring reader take its requests (once per
    /// connection and host: again after a host restart).</summary>
    internal long RingReaderAttachments => Interlocked.Read(ref _ringReaderAttachments);

    public IReadOnlyList<NbdExport> Exports { get; private set; } = [];

    /// <summary>Finds the block devices (every device of type disk) and starts listening.</summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var exports = new List<NbdExport>();
        foreach (var device in kernel.GetDevices().Where(d => d.Type == DeviceType.Disk))
        {
            await using var handle = await kernel.OpenAsync(device.Name, cancellationToken).ConfigureAwait(false);
            var length = new byte[sizeof(long)];
            var result = await handle.DeviceIoControlAsync(DiskIoControl.GetLengthInfo, ReadOnlyMemory<byte>.Empty, length, cancellationToken).ConfigureAwait(false);
            if (result.IsSuccess)
            {
                exports.Add(new NbdExport(device.Name[(device.Name.LastIndexOf('\\') + 1)..], device.Name, BitConverter.ToInt64(length)));
            }
        }

        Exports = exports;
        _listener.Start();
    }

    /// <summary>Accepts clients until <paramref name="stop"/>: each connection is served on a
    /// thread of its own (see <see cref="Serve"/>).</summary>
    public async Task RunAsync(CancellationToken stop)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(stop, _closing.Token);
        var token = linked.Token;
        try
        {
            while (!token.IsCancellationRequested)
            {
                Socket socket;
                try
                {
                    socket = await _listener.AcceptSocketAsync(token).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException && token.IsCancellationRequested)
                {
                    break;
                }

                var served = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                lock (_connections)
                {
                    _connections.RemoveAll(c => c.IsCompleted);
                    _connections.Add(served.Task);
                }

                try
                {
                    new Thread(() =>
                    {
                        try
                        {
                            Serve(socket, token);
                        }
#pragma warning disable CA1031 // Nothing a client does may end the kernel's process.
                        catch (Exception ex)
#pragma warning restore CA1031
                        {
                            Console.Error.WriteLine($"NBD: a connection ended after an unexpected error: {ex}");
                            socket.Dispose();
                        }
                        finally
                        {
                            served.TrySetResult();
                        }
                    })
                    {
                        IsBackground = true,
                        Name = "NBD client",
                    }.Start();
                }
                catch (OutOfMemoryException ex)
                {
                    // No thread for it: this client is turned away, the others go on.
                    Console.Error.WriteLine($"NBD: a client turned away: no thread to serve it ({ex.Message})");
                    socket.Dispose();
                    served.TrySetResult();
                }
            }
        }
        finally
        {
            // The token dies with this method: every connection it may close is closed first,
            // however the loop ended.
            if (!token.IsCancellationRequested)
            {
                await linked.CancelAsync().ConfigureAwait(false);
            }

            Task[] open;
            lock (_connections)
            {
                open = [.. _connections];
            }

            await Task.WhenAll(open).ConfigureAwait(false);
        }
    }

    /// <summary>Stops listening and ends every connection: each stops reading requests, answers
    /// the ones it has read, and hangs up.</summary>
    public async ValueTask DisposeAsync()
    {
        await _closing.CancelAsync().ConfigureAwait(false);
        _listener.Stop();
        Task[] open;
        lock (_connections)
        {
            open = [.. _connections];
        }

        await Task.WhenAll(open).ConfigureAwait(false);
        _closing.Dispose();
    }

    /// <summary>
    /// One client, on its own thread with blocking socket calls: a client's request wakes this
    /// thread directly (an asynchronous receive would wake the runtime's socket thread, which
    /// hands the continuation to a pool thread: two hand-offs instead of one), unless the kernel's
    /// ring reader of the disk's host takes it (<see cref="RequestIntake"/>). Replies are sent by
    /// whichever thread finishes a request (<see cref="ReplyWriter"/>). A client that leaves the
    /// handshake unanswered for the client timeout is hung up on; one in transmission may stay
    /// idle as long as it likes.
    /// </summary>
    private void Serve(Socket socket, CancellationToken stop)
    {
        var peer = "?";
        using var stream = new NetworkStream(socket, ownsSocket: true);
        using var closing = stop.Register(static s =>
        {
            try
            {
                // Wakes this connection's blocking receive (it sees the end of the stream); the
                // replies still owed go out.
                ((Socket)s!).Shutdown(SocketShutdown.Receive);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Already gone.
            }
        }, socket);
        try
        {
            peer = socket.RemoteEndPoint?.ToString() ?? "?";
            socket.NoDelay = true;

            // The client timeout: for each receive of the handshake (none once it is done: an idle
            // client may stay), and for each send of a reply (a reply not out after twice this ends
            // the connection, see ReplyWriter).
            socket.SendTimeout = _clientTimeoutMs;
            socket.ReceiveTimeout = _clientTimeoutMs;
            if (Negotiate(stream) is { } export)
            {
                socket.ReceiveTimeout = 0;
                log?.Invoke($"NBD: {peer} uses {export.Name}");
                Transmit(socket, export, peer, stop);
            }
        }
        catch (Exception ex) when (ex is IOException or EndOfStreamException or SocketException or OperationCanceledException or ObjectDisposedException or NbdProtocolException)
        {
            log?.Invoke($"NBD: {peer} disconnected: {ex.Message}");
        }
#pragma warning disable CA1031 // One client's connection must not take the server (or the kernel) down.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Console.Error.WriteLine($"NBD: {peer}: connection dropped after an unexpected error: {ex}");
        }
    }

    /// <summary>The handshake and option haggling; the export to serve, or null to hang up.</summary>
    private NbdExport? Negotiate(NetworkStream stream)
    {
        var hello = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(hello.AsSpan(8), OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(16), FlagFixedNewstyle | FlagNoZeroes);
        stream.Write(hello);

        var clientFlags = BinaryPrimitives.ReadUInt32BigEndian(Read(stream, 4));
        if ((clientFlags & ~(ClientFlagFixedNewstyle | ClientFlagNoZeroes)) != 0)
        {
            throw new NbdProtocolException($"unknown client flags 0x{clientFlags:x}");
        }

        var noZeroes = (clientFlags & ClientFlagNoZeroes) != 0;
        while (true)
        {
            var header = Read(stream, 16);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != OptionMagic)
            {
                throw new NbdProtocolException("an option without its magic");
            }

            var option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (length > MaxOptionLength)
            {
                throw new NbdProtocolException($"an option of {length} bytes");
            }

            var data = Read(stream, (int)length);
            switch (option)
            {
                case OptExportName:
                {
                    // No way to answer "unknown" here but to hang up.
                    if (Find(Encoding.UTF8.GetString(data)) is not { } export)
                    {
                        return null;
                    }

                    var reply = new byte[noZeroes ? 10 : 134];
                    BinaryPrimitives.WriteInt64BigEndian(reply, export.Size);
                    BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags);
                    stream.Write(reply);
                    return export;
                }

                case OptAbort:
                    Reply(stream, option, RepAck, []);
                    return null;
                case OptList when length != 0:
                    Reply(stream, option, RepErrInvalid, Encoding.UTF8.GetBytes("LIST takes no data"));
                    break;
                case OptList:
                    foreach (var export in Exports)
                    {
                        var name = Encoding.UTF8.GetBytes(export.Name);
                        var entry = new byte[4 + name.Length];
                        BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)name.Length);
                        name.CopyTo(entry, 4);
                        Reply(stream, option, RepServer, entry);
                    }

                    Reply(stream, option, RepAck, []);
                    break;
                case OptInfo or OptGo:
                {
                    if (!TryParseInfo(data, out var name, out var requests))
                    {
                        Reply(stream, option, RepErrInvalid, Encoding.UTF8.GetBytes("malformed INFO/GO request"));
                        break;
                    }

                    if (Find(name) is not { } export)
                    {
                        Reply(stream, option, RepErrUnknown, Encoding.UTF8.GetBytes($"no export named \"{name}\""));
                        break;
                    }

                    var info = new byte[12];
                    BinaryPrimitives.WriteUInt16BigEndian(info, InfoExport);
                    BinaryPrimitives.WriteInt64BigEndian(info.AsSpan(2), export.Size);
                    BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), TransmissionFlags);
                    Reply(stream, option, RepInfo, info);

                    // Sector alignment, 4 KiB preferred, MaxRequest at most: always sent, so
                    // clients keep to it.
                    var sizes = new byte[14];
                    BinaryPrimitives.WriteUInt16BigEndian(sizes, InfoBlockSize);
                    BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(2), 512);
                    BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(6), 4096);
                    BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(10), MaxRequest);
                    Reply(stream, option, RepInfo, sizes);
                    if (requests.Contains(InfoName))
                    {
                        var exportName = Encoding.UTF8.GetBytes(export.Name);
                        Reply(stream, option, RepInfo, [0, (byte)InfoName, .. exportName]);
                    }

                    if (requests.Contains(InfoDescription))
                    {
                        var description = Encoding.UTF8.GetBytes($"{export.Device} through the DriverIsolation kernel");
                        Reply(stream, option, RepInfo, [0, (byte)InfoDescription, .. description]);
                    }

                    Reply(stream, option, RepAck, []);
                    if (option == OptGo)
                    {
                        return export;
                    }

                    break;
                }

                default:
                    Reply(stream, option, RepErrUnsupported, []);
                    break;
            }
        }
    }

    private static ushort TransmissionFlags => FlagHasFlags | FlagSendFlush | FlagSendFua | FlagSendTrim | FlagCanMultiConn;

    private NbdExport? Find(string name) =>
        name.Length == 0 ? (Exports.Count > 0 ? Exports[0] : null) : Exports.FirstOrDefault(e => e.Name.Equals(name, StringComparison.OrdinalIgnoreCase));

    private static bool TryParseInfo(byte[] data, out string name, out ushort[] requests)
    {
        name = "";
        requests = [];
        if (data.Length < 6)
        {
            return false;
        }

        var nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > data.Length - 6)
        {
            return false;
        }

        name = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        var count = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (data.Length != 6 + (int)nameLength + (2 * count))
        {
            return false;
        }

        requests = new ushort[count];
        for (var i = 0; i < count; i++)
        {
            requests[i] = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(6 + (int)nameLength + (2 * i)));
        }

        return true;
    }

    private static void Reply(NetworkStream stream, uint option, uint type, byte[] data)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        stream.Write(reply);
    }

    /// <summary>
    /// Requests, each served on its own as soon as it is read; replies in the order they finish.
    /// Each request runs up to its first IRP on the thread that read it, the rest on the IRP's
    /// completion. Requests are read by this thread with blocking calls, or, while the kernel's
    /// ring reader of the device's host spins waiting for the host's answers, by that reader (see
    /// <see cref="RequestIntake"/>): then no thread is woken for a request that arrives while
    /// others are in flight.
    /// </summary>
    private void Transmit(Socket socket, NbdExport export, string peer, CancellationToken stop)
    {
        var device = kernel.OpenAsync(export.Device, stop).GetAwaiter().GetResult();
        using var slots = new SemaphoreSlim(MaxInFlight);
        var writer = new ReplyWriter(socket, slots);
        ReplyWriter.MarkReader();
        using var intake = new RequestIntake(this, socket, device, export, writer, slots, stop);
        try
        {
            intake.Run(kernel);
        }
        finally
        {
            // No request is started once this returns; every one started gets its answer (or the
            // socket is gone) before the handle closes.
            try
            {
                intake.Close();
            }
            catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
            {
                // The client is gone; nothing to answer to.
            }

            // And every reply handed to the writer is out or dropped (each gives its slot back
            // then): nothing is sent on the socket, nor a slot released, once this returns.
            for (var slot = 0; slot < MaxInFlight; slot++)
            {
                slots.Wait(CancellationToken.None);
            }

            device.DisposeAsync().AsTask().GetAwaiter().GetResult();
            if (writer.Failure is { } failure)
            {
                log?.Invoke($"NBD: {peer} disconnected: a reply could not be sent: {failure}");
            }
        }
    }

    /// <summary>One request: its IRPs, then its reply. Runs up to its first IRP on the reading
    /// thread, the rest on the IRP's completion.</summary>
    private async Task ServeRequestAsync(RequestIntake intake, ushort type, ushort flags, ulong cookie, ulong offset, uint length, byte[]? payload)
    {
        var (writer, device, export, slots) = (intake.Writer, intake.Device, intake.Export, intake.Slots);
        // The slot is the reply's once it is handed to the writer (released when it is out).
        var handed = false;
        try
        {
            uint error;
            byte[]? reply;
            try
            {
                (error, reply) = await ExecuteAsync(device, export, type, flags, offset, length, payload).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IoException or ObjectDisposedException or InvalidOperationException)
            {
                // The device is gone (quarantined, unloaded, the kernel stopping): an I/O error.
                (error, reply) = (EIo, null);
                log?.Invoke($"NBD: {Name(type)} of {length} bytes at {offset} on {export.Name}: {ex.Message}");
            }

            if (error != Ok)
            {
                log?.Invoke($"NBD: {Name(type)} of {length} bytes at {offset} on {export.Name} answered with errno {error}");
                reply = null;
            }

            // A read's data already sits behind room for the header: one send per reply.
            reply ??= new byte[ReplyHeader];
            BinaryPrimitives.WriteUInt32BigEndian(reply, SimpleReplyMagic);
            BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(4), error);
            BinaryPrimitives.WriteUInt64BigEndian(reply.AsSpan(8), cookie);
            handed = true;
            writer.Send(reply);
        }
        finally
        {
            intake.Finished(type, length);
            if (!handed)
            {
                slots.Release();
            }
        }
    }

    private const int RequestHeader = 28;
    private const int ReplyHeader = 16;

    /// <summary>Runs a request; for a successful read, the reply with its data after
    /// <see cref="ReplyHeader"/> bytes left for the header.</summary>
    private async Task<(uint Error, byte[]? Reply)> ExecuteAsync(DeviceHandle device, NbdExport export, ushort type, ushort flags, ulong offset, uint length, byte[]? payload)
    {
        if (type is CmdRead or CmdWrite or CmdTrim)
        {
            if (offset > (ulong)export.Size || length > (ulong)export.Size - offset)
            {
                return (type == CmdWrite ? ENoSpc : EInval, null);
            }

            if (offset % 512 != 0 || length % 512 != 0)
            {
                return (EInval, null);
            }
        }

        switch (type)
        {
            case CmdRead:
            {
                if (length > MaxRequest)
                {
                    return (EOverflow, null);
                }

                var reply = new byte[ReplyHeader + length];
                for (var done = 0; done < length; done += Chunk)
                {
                    var part = reply.AsMemory(ReplyHeader + done, Math.Min(Chunk, (int)length - done));
                    var result = await device.ReadAsync(part, (long)offset + done).ConfigureAwait(false);
                    if (!result.IsSuccess || result.Information != part.Length)
                    {
                        log?.Invoke($"NBD: read of {part.Length} bytes at {(long)offset + done} on {export.Name}: {result.Status}, {result.Information} bytes");
                        return (result.IsSuccess ? EIo : ErrorFor(result.Status), null);
                    }
                }

                return (Ok, reply);
            }

            case CmdWrite:
            {
                for (var done = 0; done < payload!.Length; done += Chunk)
                {
                    var part = payload.AsMemory(done, Math.Min(Chunk, payload.Length - done));
                    var result = await device.WriteAsync(part, (long)offset + done).ConfigureAwait(false);
                    if (!result.IsSuccess)
                    {
                        log?.Invoke($"NBD: write of {part.Length} bytes at {(long)offset + done} on {export.Name}: {result.Status}");
                        return (ErrorFor(result.Status), null);
                    }
                }

                // Forced unit access: on the medium before the reply.
                return (flags & CmdFlagFua) != 0 ? (ErrorFor((await device.FlushAsync().ConfigureAwait(false)).Status), null) : (Ok, null);
            }

            case CmdFlush:
                return (ErrorFor((await device.FlushAsync().ConfigureAwait(false)).Status), null);
            case CmdTrim:
                // A hint the disk may ignore: the data of a trimmed range is unspecified.
                return (Ok, null);
            default:
                return (EInval, null);
        }
    }

    private static string Name(ushort type) => type switch
    {
        CmdRead => "read",
        CmdWrite => "write",
        CmdFlush => "flush",
        CmdTrim => "trim",
        _ => $"command {type}",
    };

    private static byte[] Read(Stream stream, int length)
    {
        var buffer = new byte[length];
        stream.ReadExactly(buffer);
        return buffer;
    }

    /// <summary>
    /// A connection's replies, each holding its request's slot until it is out. The thread that
    /// finishes a request sends its reply at once if no other is sending (a host's reader once it
    /// has handled the completions already waiting for it, so that a burst of replies goes out in
    /// one send); otherwise it leaves it to that one and returns, so however slowly a client
    /// reads, at most one thread per connection waits on its socket, and never a thread that reads
    /// the connection's requests (a reply finished on it is sent from the pool: the connection's
    /// own thread, or a kernel's ring reader while it takes requests), which goes on taking
    /// requests as long as there are slots.
    /// </summary>
    private sealed class ReplyWriter(Socket socket, SemaphoreSlim slots)
    {
        [ThreadStatic]
        private static bool t_reader;

        private readonly Lock _gate = new();
        private readonly Queue<byte[]> _queued = new();
        private bool _sending;
        private bool _broken;

        /// <summary>Why a reply could not be sent (the connection is closed then); null while all went out.</summary>
        public string? Failure { get; private set; }

        /// <summary>This thread reads a connection's requests: it never waits to send a reply.</summary>
        public static void MarkReader() => t_reader = true;

        /// <summary>Marks (or unmarks) this thread as one that reads requests for now; the mark it
        /// had before.</summary>
        public static bool SetReader(bool reader)
        {
            var before = t_reader;
            t_reader = reader;
            return before;
        }

        /// <summary>Sends (or queues) a reply; its slot is released once it is out or dropped.</summary>
        public void Send(byte[] reply)
        {
            lock (_gate)
            {
                if (_broken)
                {
                    slots.Release(); // The client is gone: its reader sees it too.
                    return;
                }

                _queued.Enqueue(reply);
                if (_sending)
                {
                    return;
                }

                _sending = true;
            }

            if (t_reader)
            {
                ThreadPool.UnsafeQueueUserWorkItem(static writer => writer.Drain(), this, preferLocal: false);
            }
            else if (!CompletionBatch.TryDefer(_drain ??= Drain))
            {
                Drain();
            }
        }

        private Action? _drain;
        private readonly List<ArraySegment<byte>> _batch = [];

        /// <summary>Sends what is queued, all that is there in one send (a host's reader leaves
        /// its replies until it has handled the completions already waiting, see
        /// <see cref="CompletionBatch"/>), until the queue is empty.</summary>
        private void Drain()
        {
            while (true)
            {
                int replies;
                lock (_gate)
                {
                    if (_queued.Count == 0)
                    {
                        _sending = false;
                        return;
                    }

                    replies = _queued.Count;
                    while (_queued.TryDequeue(out var reply))
                    {
                        _batch.Add(reply);
                    }
                }

                try
                {
                    SendAll();
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                    int dropped;
                    lock (_gate)
                    {
                        _broken = true;
                        _sending = false;
                        dropped = _queued.Count + replies;
                        _queued.Clear();
                        Failure = ex.Message;
                    }

                    _batch.Clear();
                    slots.Release(dropped);
                    try
                    {
                        // The reader wakes and ends the connection.
                        socket.Shutdown(SocketShutdown.Both);
                    }
                    catch (Exception shutdown) when (shutdown is SocketException or ObjectDisposedException)
                    {
                        // Already closed.
                    }

                    return;
                }

                slots.Release(replies); // SendAll left the batch empty.
            }
        }

        /// <summary>Sends every byte of the batch. Each send waits at most the socket's send
        /// timeout; a batch that is still not out after that long ends the connection (a client
        /// taking a byte now and then cannot hold this thread for longer than two timeouts).</summary>
        private void SendAll()
        {
            var started = Environment.TickCount64;
            var first = true;
            while (_batch.Count > 0)
            {
                if (!first && Environment.TickCount64 - started > socket.SendTimeout)
                {
                    throw new SocketException((int)SocketError.TimedOut);
                }

                first = false;
                var sent = _batch.Count == 1
                    ? socket.Send(_batch[0].Array!, _batch[0].Offset, _batch[0].Count, SocketFlags.None)
                    : socket.Send(_batch, SocketFlags.None);

                // Drop what went out: whole replies, then the sent part of the next.
                var whole = 0;
                while (whole < _batch.Count && sent >= _batch[whole].Count)
                {
                    sent -= _batch[whole].Count;
                    whole++;
                }

                _batch.RemoveRange(0, whole);
                if (sent > 0)
                {
                    _batch[0] = _batch[0][sent..];
                }
            }
        }
    }
}

/// <summary>A client broke the NBD protocol: its connection is closed.</summary>
internal sealed class NbdProtocolException(string message) : Exception(message);
