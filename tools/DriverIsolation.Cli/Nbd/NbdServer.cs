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
internal sealed class NbdServer(Microkernel kernel, IPEndPoint endpoint, Action<string>? log = null) : IAsyncDisposable
{
    /// <summary>Largest request a client may send (the block-size info says so).</summary>
    public const int MaxRequest = 32 << 20;

    /// <summary>Each request is passed to the device in IRPs of at most this much.</summary>
    public const int Chunk = 256 << 10;

    private const int MaxInFlight = 64;
    private const int MaxOptionLength = 64 << 10;
    private readonly TcpListener _listener = new(endpoint);
    private readonly List<Task> _connections = [];

    public IPEndPoint LocalEndpoint => (IPEndPoint)_listener.LocalEndpoint;

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

    public async Task RunAsync(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptSocketAsync(stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }

            socket.NoDelay = true;
            lock (_connections)
            {
                _connections.RemoveAll(c => c.IsCompleted);
                _connections.Add(ServeAsync(socket, stop));
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        Task[] open;
        lock (_connections)
        {
            open = [.. _connections];
        }

        await Task.WhenAll(open).ConfigureAwait(false);
    }

    private async Task ServeAsync(Socket socket, CancellationToken stop)
    {
        var peer = socket.RemoteEndPoint?.ToString() ?? "?";
        await using var stream = new NetworkStream(socket, ownsSocket: true);
        try
        {
            if (await NegotiateAsync(stream, stop).ConfigureAwait(false) is { } export)
            {
                log?.Invoke($"NBD: {peer} uses {export.Name}");
                await TransmitAsync(stream, export, stop).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or EndOfStreamException or SocketException or OperationCanceledException or NbdProtocolException)
        {
            log?.Invoke($"NBD: {peer} disconnected: {ex.Message}");
        }
        catch (Exception ex)
        {
            Console.Error.WriteLine($"NBD: {peer}: connection dropped after an unexpected error: {ex}");
        }
    }

    /// <summary>The handshake and option haggling; the export to serve, or null to hang up.</summary>
    private async Task<NbdExport?> NegotiateAsync(NetworkStream stream, CancellationToken stop)
    {
        var hello = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(hello.AsSpan(8), OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(16), FlagFixedNewstyle | FlagNoZeroes);
        await stream.WriteAsync(hello, stop).ConfigureAwait(false);

        var clientFlags = BinaryPrimitives.ReadUInt32BigEndian(await ReadAsync(stream, 4, stop).ConfigureAwait(false));
        if ((clientFlags & ~(ClientFlagFixedNewstyle | ClientFlagNoZeroes)) != 0)
        {
            throw new NbdProtocolException($"unknown client flags 0x{clientFlags:x}");
        }

        var noZeroes = (clientFlags & ClientFlagNoZeroes) != 0;
        while (true)
        {
            var header = await ReadAsync(stream, 16, stop).ConfigureAwait(false);
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

            var data = await ReadAsync(stream, (int)length, stop).ConfigureAwait(false);
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
                    await stream.WriteAsync(reply, stop).ConfigureAwait(false);
                    return export;
                }

                case OptAbort:
                    await ReplyAsync(stream, option, RepAck, [], stop).ConfigureAwait(false);
                    return null;
                case OptList when length != 0:
                    await ReplyAsync(stream, option, RepErrInvalid, Encoding.UTF8.GetBytes("LIST takes no data"), stop).ConfigureAwait(false);
                    break;
                case OptList:
                    foreach (var export in Exports)
                    {
                        var name = Encoding.UTF8.GetBytes(export.Name);
                        var entry = new byte[4 + name.Length];
                        BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)name.Length);
                        name.CopyTo(entry, 4);
                        await ReplyAsync(stream, option, RepServer, entry, stop).ConfigureAwait(false);
                    }

                    await ReplyAsync(stream, option, RepAck, [], stop).ConfigureAwait(false);
                    break;
                case OptInfo or OptGo:
                {
                    if (!TryParseInfo(data, out var name, out var requests))
                    {
                        await ReplyAsync(stream, option, RepErrInvalid, Encoding.UTF8.GetBytes("malformed INFO/GO request"), stop).ConfigureAwait(false);
                        break;
                    }

                    if (Find(name) is not { } export)
                    {
                        await ReplyAsync(stream, option, RepErrUnknown, Encoding.UTF8.GetBytes($"no export named \"{name}\""), stop).ConfigureAwait(false);
                        break;
                    }

                    var info = new byte[12];
                    BinaryPrimitives.WriteUInt16BigEndian(info, InfoExport);
                    BinaryPrimitives.WriteInt64BigEndian(info.AsSpan(2), export.Size);
                    BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), TransmissionFlags);
                    await ReplyAsync(stream, option, RepInfo, info, stop).ConfigureAwait(false);

                    // Sector alignment, 4 KiB preferred, MaxRequest at most: always sent, so
                    // clients keep to it.
                    var sizes = new byte[14];
                    BinaryPrimitives.WriteUInt16BigEndian(sizes, InfoBlockSize);
                    BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(2), 512);
                    BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(6), 4096);
                    BinaryPrimitives.WriteUInt32BigEndian(sizes.AsSpan(10), MaxRequest);
                    await ReplyAsync(stream, option, RepInfo, sizes, stop).ConfigureAwait(false);
                    if (requests.Contains(InfoName))
                    {
                        var exportName = Encoding.UTF8.GetBytes(export.Name);
                        await ReplyAsync(stream, option, RepInfo, [0, (byte)InfoName, .. exportName], stop).ConfigureAwait(false);
                    }

                    if (requests.Contains(InfoDescription))
                    {
                        var description = Encoding.UTF8.GetBytes($"{export.Device} through the DriverIsolation kernel");
                        await ReplyAsync(stream, option, RepInfo, [0, (byte)InfoDescription, .. description], stop).ConfigureAwait(false);
                    }

                    await ReplyAsync(stream, option, RepAck, [], stop).ConfigureAwait(false);
                    if (option == OptGo)
                    {
                        return export;
                    }

                    break;
                }

                default:
                    await ReplyAsync(stream, option, RepErrUnsupported, [], stop).ConfigureAwait(false);
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

    private static async Task ReplyAsync(NetworkStream stream, uint option, uint type, byte[] data, CancellationToken stop)
    {
        var reply = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)data.Length);
        data.CopyTo(reply, 20);
        await stream.WriteAsync(reply, stop).ConfigureAwait(false);
    }

    /// <summary>Requests, each served on its own as soon as it is read; replies in the order
    /// they finish, one at a time on the socket.</summary>
    private async Task TransmitAsync(NetworkStream stream, NbdExport export, CancellationToken stop)
    {
        await using var device = await kernel.OpenAsync(export.Device, stop).ConfigureAwait(false);
        using var replies = new SemaphoreSlim(1);
        using var slots = new SemaphoreSlim(MaxInFlight);
        var running = new List<Task>();

        // Requests are read through a buffer: a burst of them costs one receive, not two each.
        var input = new BufferedStream(stream, 64 << 10);
        try
        {
            while (true)
            {
                var header = await ReadAsync(input, 28, stop).ConfigureAwait(false);
                if (BinaryPrimitives.ReadUInt32BigEndian(header) != RequestMagic)
                {
                    throw new NbdProtocolException("a request without its magic");
                }

                var flags = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4));
                var type = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6));
                var cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
                var offset = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(16));
                var length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24));
                if (type == CmdDisconnect)
                {
                    return;
                }

                byte[]? payload = null;
                if (type == CmdWrite)
                {
                    if (length > MaxRequest)
                    {
                        throw new NbdProtocolException($"a write of {length} bytes, over the {MaxRequest} the client was told");
                    }

                    payload = await ReadAsync(input, (int)length, stop).ConfigureAwait(false);
                }

                await slots.WaitAsync(stop).ConfigureAwait(false);
                running.RemoveAll(t => t.IsCompleted);
                running.Add(ServeRequestAsync(stream, device, export, replies, slots, type, flags, cookie, offset, length, payload, stop));
            }
        }
        finally
        {
            // Every request read gets its answer (or the socket is gone) before the handle closes.
            try
            {
                await Task.WhenAll(running).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
            {
                // The client is gone; nothing to answer to.
            }
        }
    }

    /// <summary>One request: its IRPs, then its reply. Runs up to its first IRP on the reading
    /// loop's thread, the rest on the IRP's completion.</summary>
    private async Task ServeRequestAsync(NetworkStream stream, DeviceHandle device, NbdExport export, SemaphoreSlim replies, SemaphoreSlim slots,
        ushort type, ushort flags, ulong cookie, ulong offset, uint length, byte[]? payload, CancellationToken stop)
    {
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

            // A read's data already sits behind room for the header: one write per reply.
            reply ??= new byte[ReplyHeader];
            BinaryPrimitives.WriteUInt32BigEndian(reply, SimpleReplyMagic);
            BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(4), error);
            BinaryPrimitives.WriteUInt64BigEndian(reply.AsSpan(8), cookie);
            await replies.WaitAsync(stop).ConfigureAwait(false);
            try
            {
                await stream.WriteAsync(reply, stop).ConfigureAwait(false);
            }
            finally
            {
                replies.Release();
            }
        }
        finally
        {
            slots.Release();
        }
    }

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

    private static async Task<byte[]> ReadAsync(Stream stream, int length, CancellationToken stop)
    {
        var buffer = new byte[length];
        await stream.ReadExactlyAsync(buffer, stop).ConfigureAwait(false);
        return buffer;
    }
}

/// <summary>A client broke the NBD protocol: its connection is closed.</summary>
internal sealed class NbdProtocolException(string message) : Exception(message);
