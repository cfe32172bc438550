using System.Buffers;
using System.Diagnostics;
using System.IO.MemoryMappedFiles;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using MessagePack;

namespace DriverIsolation.Protocol;

/// <summary>
/// One framed, duplex connection over a stream (a named pipe, or an in-memory pipe in tests).
/// Receiving is pull-based: the owner's receive loop calls <see cref="ReadAsync"/>. Sending is
/// <see cref="Send"/> from any thread: frames are encoded under a lock into an output pipe that
/// never applies back-pressure, and one loop (<c>DoSendAsync</c>) drains it to the stream, so
/// concurrent senders batch into one write. <see cref="Abort"/> drops the connection now;
/// <see cref="DisposeAsync"/> drains what was sent first.
/// </summary>
public sealed class FrameConnection : IAsyncDisposable
{
    private readonly Stream _stream;

    /// <summary>What reads and writes go through: the stream, or a socket on its descriptor (see <see cref="PipeSocket"/>).</summary>
    private readonly Stream _io;
    private readonly System.Net.Sockets.Socket? _socket;
    private readonly PipeReader _input;
    private readonly Pipe _output = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));
    private readonly MessagePackSerializerOptions _readOptions;
    private readonly BorrowingOptions? _borrowing;

    /// <summary>Where a borrowing connection reads every completion (see <see cref="ReceivedComplete"/>).</summary>
    private readonly ReceivedComplete? _received;

    /// <summary>Where a host's connection reads every request (see <see cref="ReceivedDispatch"/>).</summary>
    private readonly ReceivedDispatch? _dispatch;
    private readonly int _maxFrameSize;
    private readonly Lock _sendGate = new();
    private readonly ArrayBufferWriter<byte> _scratch = new(256);
    private readonly CancellationTokenSource _aborted = new();
    private readonly Task _sendLoop;
    private readonly List<(long Position, TaskCompletionSource Done)> _flushWaiters = [];
    private bool _outputCompleted;
    private long _queuedBytes;
    private long _writtenBytes;

    // The shared-memory rings, once in use (see OfferRing). _ringGate keeps a ring from being
    // unmapped while the reader is in it; senders are kept out by _sendGate.
    private static readonly byte[] DoorbellFrame = FrameCodec.Encode(new RingDoorbell(0));
    private readonly bool _untrustedPeer;
    private readonly Lock _ringGate = new();
    private ShmRing? _sendRing;
    private ShmRing? _receiveRing;
    private ShmRing? _offeredReceive;
    private MemoryMappedFile? _ringFile;
    private string? _ringPath;
    private byte[] _ringBuffer = new byte[4096];
    private long _spinTicks;
    private readonly TimeSpan _ringFullTimeout = TimeSpan.FromSeconds(5);

    // On Linux a reader sleeps on its ring's futex, on a thread of its own (RingSleeper), and the
    // pipe is only watched for the peer's end (WatchPipeAsync); elsewhere it sleeps on the pipe.
    private static readonly TimeSpan SleepLimit = TimeSpan.FromSeconds(1);
    private volatile RingSleeper? _sleeper;
    private volatile Task? _pipeWatch;
    private volatile bool _pipeEnded;
    private ProtocolException? _pipeError;

    /// <summary>What the ring's reader polls while it spins (see <see cref="TryAttach"/>).</summary>
    private IRingCompanion? _companion;

    /// <param name="stream">The duplex stream; owned and disposed by the connection.</param>
    /// <param name="untrustedPeer">True on the kernel side: every read uses
    /// <see cref="FrameCodec.UntrustedOptions"/>.</param>
    /// <param name="maxFrameSize">Hard limit on a frame body, both directions.</param>
    /// <param name="borrowPayloads">True: the byte payloads of a message read are slices of a
    /// buffer of the connection's, valid until the next <see cref="ReadAsync"/> (no array per
    /// message); the reader copies what it keeps. A completion is then read into one
    /// <see cref="ReceivedComplete"/>, as valid.</param>
    /// <param name="reuseDispatch">True: a request is read into one <see cref="ReceivedDispatch"/>,
    /// valid until the next <see cref="ReadAsync"/> (its input is a new array all the same).</param>
    public FrameConnection(Stream stream, bool untrustedPeer, int maxFrameSize = ProtocolConstants.DefaultMaxFrameSize, bool borrowPayloads = false,
        bool reuseDispatch = false)
    {
        _stream = stream;
        (_io, _socket) = PipeSocket.Open(stream);
        _maxFrameSize = maxFrameSize;
        _untrustedPeer = untrustedPeer;
        _readOptions = untrustedPeer ? FrameCodec.UntrustedOptions : FrameCodec.TrustedOptions;
        if (borrowPayloads)
        {
            _borrowing = new BorrowingOptions(_readOptions);
            _readOptions = _borrowing;
            _received = new ReceivedComplete();
        }

        _dispatch = reuseDispatch ? new ReceivedDispatch() : null;

        _input = PipeReader.Create(_io, new StreamPipeReaderOptions(bufferSize: 64 * 1024, minimumReadSize: 4096, leaveOpen: true));
        _sendLoop = DoSendAsync();
    }

    /// <summary>Why the connection ended, once it has (first reason wins).</summary>
    public string? CloseReason { get; private set; }

    /// <summary>
    /// Reads the next message. Returns null when the peer closed the connection cleanly between
    /// frames. Throws <see cref="ProtocolException"/> for a malformed, oversized or truncated frame.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<Message?> ReadAsync(CancellationToken cancellationToken = default)
    {
        _borrowing?.Reset();
        while (true)
        {
            if (_sleeper is { } sleeper)
            {
                // A peer that broke the protocol on the pipe is served no more (a plain read first:
                // this runs for every frame, the exchange only once there is an error).
                if (Volatile.Read(ref _pipeError) is not null && Interlocked.Exchange(ref _pipeError, null) is { } error)
                {
                    throw error;
                }

                if (TryReadRing() is { } inRing)
                {
                    return inRing;
                }

                if (_pipeEnded)
                {
                    // The peer is gone (or this side closed): what it put in the ring before is still read.
                    return TryReadRing() ?? (Interlocked.Exchange(ref _pipeError, null) is { } late ? throw late : null);
                }

                if (!SpinForRing())
                {
                    CompanionReleased();
                    cancellationToken.ThrowIfCancellationRequested();
                    await sleeper.WaitAsync(cancellationToken).ConfigureAwait(false);
                }

                continue;
            }

            if (_receiveRing is not null)
            {
                if (TryReadRing() is { } fromRing)
                {
                    return fromRing;
                }

                if (SpinForRing())
                {
                    continue;
                }

                // About to sleep on the pipe: the producer rings the doorbell for a waiting consumer.
                if (RingHasDataAfterWaiting())
                {
                    continue;
                }
            }

            var message = await ReadPipeAsync(cancellationToken).ConfigureAwait(false);
            switch (message)
            {
                case null:
                    // The peer is gone; what it put in the ring before it went is still read.
                    return TryReadRing();
                case RingDoorbell:
                    continue;
                case UseRing use when !_untrustedPeer && _receiveRing is null:
                    AcceptRing(use);
                    StartSleeping();
                    continue;
                case RingReady when _untrustedPeer && _offeredReceive is not null && _receiveRing is null:
                    lock (_ringGate)
                    {
                        _receiveRing = _offeredReceive;
                    }

                    DeleteRingFile();
                    StartSleeping();
                    continue;
                case UseRing or RingReady:
                    var reason = $"Unexpected {message.GetType().Name}: the rings were not offered that way.";
                    SetCloseReason(reason);
                    throw new ProtocolException(reason);
                default:
                    return message;
            }
        }
    }

    /// <summary>One frame's message. A connection that borrows payloads reads a completion into
    /// its one <see cref="ReceivedComplete"/>, one that reuses requests a request into its one
    /// <see cref="ReceivedDispatch"/>; any other frame, or one of those in any other form, goes
    /// through the serializer and its checks.</summary>
    private Message Decode(ReadOnlySequence<byte> body)
    {
        if (_received is not null && _received.TryRead(body, _borrowing!))
        {
            return _received;
        }

        return _dispatch is not null && _dispatch.TryRead(body) ? _dispatch : FrameCodec.DecodeBody(body, _readOptions);
    }

    /// <summary>Reads the next frame from the pipe (see <see cref="ReadAsync"/>). <paramref name="plain"/>:
    /// decoded into a message of its own, never into the connection's reused ones (the pipe watcher,
    /// which runs beside the reader).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<Message?> ReadPipeAsync(CancellationToken cancellationToken, bool plain = false)
    {
        while (true)
        {
            ReadResult result;
            try
            {
                result = await _input.ReadAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                SetCloseReason($"read failed: {ex.Message}");
                return null;
            }

            var buffer = result.Buffer;
            try
            {
                if (FrameCodec.TryReadFrame(ref buffer, _maxFrameSize, out var body))
                {
                    var message = plain ? FrameCodec.DecodeBody(body, _untrustedPeer ? FrameCodec.UntrustedOptions : FrameCodec.TrustedOptions) : Decode(body);
                    _input.AdvanceTo(buffer.Start);
                    return message;
                }
            }
            catch (ProtocolException ex)
            {
                SetCloseReason(ex.Message);
                _input.AdvanceTo(result.Buffer.End);
                throw;
            }

            if (result.IsCompleted || result.IsCanceled)
            {
                var truncated = !buffer.IsEmpty;
                _input.AdvanceTo(buffer.End);
                if (truncated)
                {
                    var reason = $"Truncated frame: the peer closed the connection with {buffer.Length} bytes of an unfinished frame.";
                    SetCloseReason(reason);
                    throw new ProtocolException(reason);
                }

                SetCloseReason("peer closed the connection");
                return null;
            }

            // Not a whole frame yet: consume nothing, but say everything was examined so the
            // next read waits for more bytes.
            _input.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>Queues a message for sending. Never blocks on the peer. Returns false if the
    /// connection is closed (the message is dropped: the peer is gone).</summary>
    /// <exception cref="ProtocolException">The message exceeds the frame limit.</exception>
    public bool Send(Message message)
    {
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return false;
            }

            if (_sendRing is { } ring)
            {
                return WriteToRing(ring, FrameCodec.SerializeBody(message, _maxFrameSize, _scratch));
            }

            FrameCodec.WriteFrame(_output.Writer, message, _maxFrameSize, _scratch);
            Commit();
            return true;
        }
    }

    /// <summary>Queues a hot message written without a message object (see <see cref="IFrameBody"/>);
    /// otherwise as <see cref="Send(Message)"/>.</summary>
    /// <exception cref="ProtocolException">The message exceeds the frame limit.</exception>
    public bool Send<TBody>(in TBody body)
        where TBody : struct, IFrameBody
    {
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return false;
            }

            var encoded = FrameCodec.SerializeBody(in body, _maxFrameSize, _scratch);
            if (_sendRing is { } ring)
            {
                return WriteToRing(ring, encoded);
            }

            FrameCodec.WriteFrame(_output.Writer, encoded);
            Commit();
            return true;
        }
    }

    /// <summary>Sends a message and waits until it has been written to the stream (or the
    /// connection ended, or <paramref name="timeout"/> passed): for a message that must be out
    /// before something drastic happens to this process. False if it was not written.</summary>
    public bool SendAndWait(Message message, TimeSpan timeout)
    {
        TaskCompletionSource done;
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return false;
            }

            if (_sendRing is { } ring)
            {
                // In shared memory it is out as soon as it is written: the peer reads what is in
                // the ring even after this process is gone.
                return WriteToRing(ring, FrameCodec.SerializeBody(message, _maxFrameSize, _scratch));
            }

            FrameCodec.WriteFrame(_output.Writer, message, _maxFrameSize, _scratch);
            Commit();
            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_flushWaiters)
            {
                if (Interlocked.Read(ref _writtenBytes) >= _queuedBytes)
                {
                    return true;
                }

                _flushWaiters.Add((_queuedBytes, done));
            }
        }

        try
        {
            return done.Task.Wait(timeout);
        }
        catch (AggregateException)
        {
            return false;
        }
    }

    /// <summary>Queues raw bytes, not a frame (a host's fault shim sending a malformed frame on
    /// purpose). False if the connection is closed.</summary>
    public bool SendRaw(ReadOnlySpan<byte> bytes)
    {
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return false;
            }

            if (_sendRing is { } ring)
            {
                return WriteToRing(ring, bytes);
            }

            _output.Writer.Write(bytes);
            Commit();
            return true;
        }
    }

    /// <summary>True once this side sends on a shared-memory ring.</summary>
    public bool UsesRing => _sendRing is not null;

    /// <summary>True if the peer's next frame is already in the ring: the next
    /// <see cref="ReadAsync"/> returns without waiting (or throws for a malformed frame).</summary>
    public bool FrameWaiting
    {
        get
        {
            lock (_ringGate)
            {
                return _receiveRing is { } ring && ring.HasData;
            }
        }
    }

    /// <summary>
    /// Kernel side: creates the two rings in a new owner-only file in <paramref name="directory"/>,
    /// tells the peer (<see cref="UseRing"/>, on the pipe) and from then on sends on the ring. The
    /// peer's frames come from its ring once it answered <see cref="RingReady"/>; the file is
    /// deleted then (both sides have it mapped). The pipe stays for noticing the peer's end (and,
    /// off Linux, for doorbells). False if the connection is closed.
    /// </summary>
    /// <param name="capacity">Bytes per direction: a power of two, at least twice the frame limit.</param>
    /// <param name="spin">How long a reader spins on an empty ring before it sleeps.</param>
    public bool OfferRing(string directory, long capacity, TimeSpan spin)
    {
        if (capacity < 2L * (_maxFrameSize + 8))
        {
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity, $"a ring must hold two frames of the limit ({_maxFrameSize} bytes)");
        }

        var path = Path.Combine(directory, $"drviso-ring-{Environment.ProcessId}-{Guid.NewGuid():N}");
        var size = 2 * ShmRing.SizeFor(capacity);
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.ReadWrite };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        var stream = new FileStream(path, options);
        stream.SetLength(size);
        var file = MemoryMappedFile.CreateFromFile(stream, null, size, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
        var send = ShmRing.Map(file, 0, capacity);
        var receive = ShmRing.Map(file, ShmRing.SizeFor(capacity), capacity);
        lock (_sendGate)
        {
            if (_outputCompleted || _sendRing is not null)
            {
                send.Dispose();
                receive.Dispose();
                file.Dispose();
                File.Delete(path);
                return false;
            }

            _ringFile = file;
            _ringPath = path;
            _offeredReceive = receive;
            _spinTicks = (long)(spin.TotalSeconds * Stopwatch.Frequency);
            FrameCodec.WriteFrame(_output.Writer, new UseRing(path, 0, ShmRing.SizeFor(capacity), capacity, (int)spin.TotalMicroseconds), _maxFrameSize, _scratch);
            Commit();
            _sendRing = send;
        }

        return true;
    }

    /// <summary>Host side: maps the rings the kernel offered, answers on the pipe, and sends on
    /// its ring from then on.</summary>
    private void AcceptRing(UseRing use)
    {
        var file = MemoryMappedFile.CreateFromFile(use.Path, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite);
        var receive = ShmRing.Map(file, use.KernelToHostOffset, use.Capacity);
        var send = ShmRing.Map(file, use.HostToKernelOffset, use.Capacity);
        _spinTicks = (long)(TimeSpan.FromMicroseconds(use.SpinMicroseconds).TotalSeconds * Stopwatch.Frequency);
        lock (_ringGate)
        {
            _receiveRing = receive;
        }

        lock (_sendGate)
        {
            _ringFile = file;
            if (!_outputCompleted)
            {
                FrameCodec.WriteFrame(_output.Writer, new RingReady(use.Capacity), _maxFrameSize, _scratch);
                Commit();
                _sendRing = send;
            }
        }
    }

    /// <summary>Appends a frame body to the ring (under the send lock) and wakes a sleeping
    /// reader. A ring that stays full (a reader that does not read) ends the connection.</summary>
    private bool WriteToRing(ShmRing ring, ReadOnlySpan<byte> body)
    {
        long deadline = 0;
        var spinner = default(SpinWait);
        while (!ring.TryWrite(body))
        {
            if (ring.TakeWaiting())
            {
                WakeConsumer(ring);
            }

            var now = Stopwatch.GetTimestamp();
            if (deadline == 0)
            {
                deadline = now + (long)(_ringFullTimeout.TotalSeconds * Stopwatch.Frequency);
            }
            else if (now > deadline)
            {
                Abort($"the peer's ring stayed full for {_ringFullTimeout.TotalSeconds:0} s: it does not read");
                return false;
            }

            spinner.SpinOnce(sleep1Threshold: -1);
        }

        if (ring.TakeWaiting())
        {
            WakeConsumer(ring);
        }

        return true;
    }

    /// <summary>Wakes the peer's reader, which said it sleeps (under the send lock).</summary>
    private void WakeConsumer(ShmRing ring)
    {
        if (Futex.IsSupported)
        {
            ring.WakeSleeper();
        }
        else
        {
            _output.Writer.Write(DoorbellFrame);
            Commit();
        }
    }

    /// <summary>From now on (the rings in use, on Linux) the reader sleeps on its ring's futex
    /// and another loop watches the pipe, where nothing but the peer's end is expected.</summary>
    private void StartSleeping()
    {
        if (!Futex.IsSupported || _receiveRing is null)
        {
            return;
        }

        _sleeper = new RingSleeper(SleepForRing, WakeReader, _untrustedPeer ? "ring reader (kernel)" : "ring reader");
        _pipeWatch = WatchPipeAsync();
    }

    /// <summary>The sleeper's wait: returns once the ring has a frame, the pipe ended, the
    /// connection closed, or <paramref name="cancellationToken"/> was cancelled.</summary>
    private void SleepForRing(CancellationToken cancellationToken)
    {
        var idleWakes = 0;
        while (!cancellationToken.IsCancellationRequested && !_pipeEnded)
        {
            ShmRing sleepOn;
            lock (_ringGate)
            {
                if (_receiveRing is not { } ring || ring.HasData)
                {
                    return;
                }

                ring.SetWaiting();
                if (ring.HasData || _pipeEnded || cancellationToken.IsCancellationRequested)
                {
                    ring.ClearWaiting();
                    return;
                }

                sleepOn = ring;
            }

            // Outside the lock: a close wakes it first (WakeReader), and a sleep on a ring unmapped
            // since then fails at once in the kernel rather than touching the memory here.
            var slept = sleepOn.Sleep(SleepLimit);
            lock (_ringGate)
            {
                _receiveRing?.ClearWaiting();
            }

            // A peer that keeps clearing the flag without writing anything would keep this thread
            // spinning through here: past a few such returns in a row, it waits a millisecond.
            idleWakes = slept ? 0 : idleWakes + 1;
            if (idleWakes > 64)
            {
                Thread.Sleep(1);
            }
        }
    }

    /// <summary>Ends the reader's sleep (the pipe ended, the connection closes, a read was cancelled).</summary>
    private void WakeReader()
    {
        lock (_ringGate)
        {
            if (_receiveRing is { } ring)
            {
                ring.ClearWaiting();
                ring.WakeSleeper();
            }
        }
    }

    /// <summary>Reads the pipe while the reader sleeps on the ring: the peer's end (or a broken or
    /// unexpected frame, which ends the connection too) is the reader's end once the ring is read.</summary>
    private async Task WatchPipeAsync()
    {
        await Task.Yield();
        try
        {
            // Nothing is expected here (a peer on Linux wakes the reader through the futex, not
            // with doorbells): any frame at all breaks the protocol.
            if (await ReadPipeAsync(CancellationToken.None, plain: true).ConfigureAwait(false) is { } message)
            {
                var reason = $"Unexpected {message.GetType().Name} on the pipe: frames travel in the rings once they are in use.";
                SetCloseReason(reason);
                _pipeError = new ProtocolException(reason);
            }
        }
        catch (ProtocolException ex)
        {
            _pipeError = ex;
        }
#pragma warning disable CA1031 // Whatever ends the watch ends the connection; the reader reports it.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            SetCloseReason($"read failed: {ex.GetType().Name}: {ex.Message}");
        }
        finally
        {
            _pipeEnded = true;
            DetachCompanion();
            WakeReader();
        }
    }

    private Message? TryReadRing()
    {
        lock (_ringGate)
        {
            if (_receiveRing is not { } ring)
            {
                return null;
            }

            int length;
            try
            {
                length = ring.TryRead(ref _ringBuffer, _maxFrameSize);
            }
            catch (ProtocolException ex)
            {
                SetCloseReason(ex.Message);
                throw;
            }

            if (length == 0)
            {
                return null;
            }

            Message message;
            try
            {
                message = Decode(new ReadOnlySequence<byte>(_ringBuffer, 0, length));
            }
            catch (ProtocolException ex)
            {
                SetCloseReason(ex.Message);
                throw;
            }

            if (message is UseRing or RingReady or RingDoorbell)
            {
                var reason = $"Unexpected {message.GetType().Name} in the ring: it belongs on the pipe.";
                SetCloseReason(reason);
                throw new ProtocolException(reason);
            }

            return message;
        }
    }

    /// <summary>Spins (without sleeping) up to the spin time for a frame; true if one came.</summary>
    private bool SpinForRing()
    {
        if (_spinTicks <= 0)
        {
            return false;
        }

        var until = Stopwatch.GetTimestamp() + _spinTicks;
        var spinner = default(SpinWait);
        while (Stopwatch.GetTimestamp() < until)
        {
            var companion = Volatile.Read(ref _companion);
            lock (_ringGate)
            {
                if (_receiveRing is not { } ring || ring.HasData)
                {
                    return true;
                }

                // A companion sends from this thread: only while what it sends fits in the peer's
                // ring at once (a reader waiting for room there reads nothing meanwhile).
                if (companion is not null && !(_sendRing is { } send && send.FreeBytes >= send.Capacity / 2))
                {
                    companion = null;
                }
            }

            if (companion is not null && PollCompanion(companion))
            {
                // It took work (which may have sent frames whose answers come to this ring): the
                // spin starts over.
                until = Stopwatch.GetTimestamp() + _spinTicks;
                spinner = default;
                continue;
            }

            spinner.SpinOnce(sleep1Threshold: -1);
        }

        return false;
    }

    /// <summary>
    /// Has this connection's ring reader call <paramref name="companion"/> while it spins on an
    /// empty ring (and tell it when it stops: <see cref="IRingCompanion.Released"/> before it
    /// sleeps, <see cref="IRingCompanion.Detached"/> when the connection closes). False where the
    /// reader does not spin on a ring of its own thread (the pipe transport, no futex, no spin), or
    /// already has a companion. Only one companion at a time.
    /// </summary>
    public bool TryAttach(IRingCompanion companion)
    {
        ArgumentNullException.ThrowIfNull(companion);
        if (_sleeper is null || _spinTicks <= 0 || _pipeEnded || Interlocked.CompareExchange(ref _companion, companion, null) is not null)
        {
            return false;
        }

        if (_pipeEnded)
        {
            // Closed meanwhile: the close may have looked for a companion before there was one.
            Detach(companion);
            return false;
        }

        return true;
    }

    /// <summary>Stops the reader calling <paramref name="companion"/> (if it is this connection's);
    /// it is told <see cref="IRingCompanion.Detached"/>.</summary>
    public void Detach(IRingCompanion companion)
    {
        if (Interlocked.CompareExchange(ref _companion, null, companion) == companion)
        {
            TellDetached(companion);
        }
    }

    private static void TellDetached(IRingCompanion companion)
    {
        try
        {
            companion.Detached();
        }
#pragma warning disable CA1031 // As in PollCompanion: the connection's close goes on.
        catch (Exception)
#pragma warning restore CA1031
        {
            // Detached all the same.
        }
    }

    /// <summary>The companion's poll; one that throws is detached (the reader goes on: what a
    /// companion does is not the peer's doing).</summary>
    private bool PollCompanion(IRingCompanion companion)
    {
        try
        {
            return companion.Poll();
        }
#pragma warning disable CA1031 // A companion's failure must not end the connection to the host.
        catch (Exception)
#pragma warning restore CA1031
        {
            Detach(companion);
            return false;
        }
    }

    private void CompanionReleased()
    {
        if (Volatile.Read(ref _companion) is not { } companion)
        {
            return;
        }

        try
        {
            companion.Released();
        }
#pragma warning disable CA1031 // As in PollCompanion.
        catch (Exception)
#pragma warning restore CA1031
        {
            Detach(companion);
        }
    }

    private void DetachCompanion()
    {
        if (Interlocked.Exchange(ref _companion, null) is { } companion)
        {
            TellDetached(companion);
        }
    }

    /// <summary>Says the reader sleeps, then looks once more (a frame written just before the
    /// flag was seen would otherwise wait for the next doorbell). True if there is one.</summary>
    private bool RingHasDataAfterWaiting()
    {
        lock (_ringGate)
        {
            if (_receiveRing is not { } ring)
            {
                return false;
            }

            ring.SetWaiting();
            if (!ring.HasData)
            {
                return false;
            }

            ring.ClearWaiting();
            return true;
        }
    }

    private void DeleteRingFile()
    {
        var path = Interlocked.Exchange(ref _ringPath, null);
        if (path is not null)
        {
            try
            {
                File.Delete(path);
            }
            catch (IOException)
            {
                // Gone already.
            }
        }
    }

    /// <summary>Unmaps the rings (the reader is kept out by the ring lock, senders by the send lock).</summary>
    private void DisposeRings()
    {
        _pipeEnded = true;
        DetachCompanion();
        _sleeper?.Stop();
        lock (_sendGate)
        {
            lock (_ringGate)
            {
                // A reader asleep on the ring wakes before it is unmapped.
                _receiveRing?.ClearWaiting();
                _receiveRing?.WakeSleeper();
                _sendRing?.Dispose();
                _receiveRing?.Dispose();
                if (_offeredReceive != _receiveRing)
                {
                    _offeredReceive?.Dispose();
                }

                _ringFile?.Dispose();
                _sendRing = _receiveRing = _offeredReceive = null;
                _ringFile = null;
            }
        }

        DeleteRingFile();
    }

    /// <summary>Hands what was written to the output pipe to the send loop (under the send lock).</summary>
    private void Commit()
    {
        _queuedBytes += _output.Writer.UnflushedBytes;

        // Without a pause threshold this completes synchronously: it only wakes DoSendAsync.
        var flush = _output.Writer.FlushAsync();
        if (!flush.IsCompleted)
        {
            flush.AsTask().GetAwaiter().GetResult();
        }
    }

    private void ReleaseFlushWaiters(bool failed)
    {
        lock (_flushWaiters)
        {
            var written = Interlocked.Read(ref _writtenBytes);
            for (var i = _flushWaiters.Count - 1; i >= 0; i--)
            {
                if (failed || _flushWaiters[i].Position <= written)
                {
                    if (failed)
                    {
                        _flushWaiters[i].Done.TrySetCanceled();
                    }
                    else
                    {
                        _flushWaiters[i].Done.TrySetResult();
                    }

                    _flushWaiters.RemoveAt(i);
                }
            }
        }
    }

    /// <summary>Drops the connection now: pending output is discarded, reads end.</summary>
    public void Abort(string reason)
    {
        SetCloseReason(reason);
        CompleteOutput();
        _aborted.Cancel();
        _input.CancelPendingRead();
        _pipeEnded = true;
        DetachCompanion();
        WakeReader();
        try
        {
            PipeSocket.Close(_socket);
            _stream.Dispose();
        }
        catch (IOException)
        {
            // Already broken: nothing more to release.
        }
    }

    /// <summary>Sends what was queued, then closes.</summary>
    public async ValueTask DisposeAsync()
    {
        CompleteOutput();
        try
        {
            await _sendLoop.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            _aborted.Cancel();
        }

        SetCloseReason("closed locally");
        _pipeEnded = true;
        if (_pipeWatch is { } watch)
        {
            // The watcher reads the pipe: it must be out of it before the reader is completed.
            _input.CancelPendingRead();
            await watch.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        await _input.CompleteAsync().ConfigureAwait(false);
        PipeSocket.Close(_socket);
        await _stream.DisposeAsync().ConfigureAwait(false);
        DisposeRings();
        _aborted.Dispose();
    }

    private void CompleteOutput()
    {
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return;
            }

            _outputCompleted = true;
            _output.Writer.Complete();
        }
    }

    private async Task DoSendAsync()
    {
        await Task.Yield();
        var reader = _output.Reader;
        Exception? error = null;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(_aborted.Token).ConfigureAwait(false);
                var buffer = result.Buffer;
                foreach (var segment in buffer)
                {
                    await _io.WriteAsync(segment, _aborted.Token).ConfigureAwait(false);
                }

                if (!buffer.IsEmpty)
                {
                    await _io.FlushAsync(_aborted.Token).ConfigureAwait(false);
                }

                reader.AdvanceTo(buffer.End);
                if (!buffer.IsEmpty)
                {
                    Interlocked.Add(ref _writtenBytes, buffer.Length);
                    ReleaseFlushWaiters(failed: false);
                }

                if (result.IsCompleted)
                {
                    break;
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Aborted: pending output is dropped on purpose.
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            error = ex;
            SetCloseReason($"write failed: {ex.Message}");
        }
        finally
        {
            CompleteOutput();
            ReleaseFlushWaiters(failed: true);
            await reader.CompleteAsync(error).ConfigureAwait(false);
        }
    }

    private void SetCloseReason(string reason) => CloseReason ??= reason;
}
