using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.ExceptionServices;
using DriverIsolation.Kernel;
using DriverIsolation.Protocol;
using static DriverIsolation.Cli.Nbd.NbdProtocol;

namespace DriverIsolation.Cli.Nbd;

internal sealed partial class NbdServer
{
    /// <summary>
    /// A connection's requests, read from its socket through one buffer and started as they are
    /// read, by one of two threads (never both at once: the gate):
    /// <list type="bullet">
    /// <item>the kernel's ring reader of the device's host, while it spins on its empty ring
    /// waiting for the host's answers (the intake is its <see cref="IRingCompanion"/>): it takes
    /// what the socket holds without blocking, and starts only requests that are all here, of at
    /// most <see cref="Chunk"/>, while a slot is free and at most <see cref="ReaderBudget"/> bytes
    /// are in flight; anything else it leaves to the connection's thread. Replies it finishes at
    /// once (an error, a TRIM) are sent from the pool, as the connection's thread's are;</item>
    /// <item>the connection's own thread (<see cref="Run"/>), with blocking calls, whenever the
    /// reader does not: it sleeps, it is busy, it left a request to this thread, or the device's
    /// host is not a process on the ring transport.</item>
    /// </list>
    /// Under load the reader, awake anyway for the host's answers, takes the requests, and the
    /// connection's thread sleeps: one thread fewer woken per request.
    /// </summary>
    private sealed class RequestIntake(NbdServer server, Socket socket, DeviceHandle device, NbdExport export, ReplyWriter writer,
        SemaphoreSlim slots, CancellationToken stop) : IRingCompanion, IDisposable
    {
        /// <summary>
        /// The bytes of reads and writes in flight past which the ring reader leaves new requests
        /// to the connection's thread: a quarter of a ring's default 4 MiB. The reader sends a
        /// request's frame itself: a send waits while the host's ring is full, and a reader that
        /// waits is not reading the host's answers. Keeping what one connection has in flight well
        /// below a ring keeps that wait short (as it is for a continuation that runs on the reader
        /// and sends, <see cref="KernelOptions.InlineCompletions"/>).
        /// </summary>
        public const long ReaderBudget = 1 << 20;

        /// <summary>How long the reader may not have polled before this thread reads again
        /// (a reader busy for that long, or one that went away without a word).</summary>
        private const long ReaderQuietMs = 20;

        /// <summary>Requests, and bytes of their data, the reader starts in one poll at most: it
        /// reads nothing of the host's meanwhile, and sends their frames itself (the ring reader
        /// polls only while the host's ring is at least half free; these keep what one poll sends
        /// well under that).</summary>
        private const int MaxPerPoll = 16;
        private const long MaxBytesPerPoll = Chunk;

        /// <summary>How long this thread waits for the socket, without blocking the reader out,
        /// while requests are in flight (the reader then spins for their answers, and takes what
        /// comes next).</summary>
        private const int InFlightPollMicroseconds = 1000;

        private readonly Lock _gate = new();
        private readonly AutoResetEvent _turn = new(false);
        private readonly List<Task> _running = [];

        /// <summary>Room for a request header and a whole <see cref="Chunk"/> of a write's data.</summary>
        private readonly byte[] _buffer = new byte[RequestHeader + Chunk];
        private int _start;
        private int _end;
        private volatile bool _ended;
        private volatile bool _threadsTurn;
        private volatile bool _attached;
        private int _pollStarted;
        private long _pollBytes;
        private int _readerPolls;
        private long _lastPoll;
        private long _lastHangUpCheck;
        private long _bytesInFlight;
        private int _requestsInFlight;
        private IDisposable? _attachment;
        private ExceptionDispatchInfo? _failure;

        public ReplyWriter Writer => writer;

        public DeviceHandle Device => device;

        public NbdExport Export => export;

        public SemaphoreSlim Slots => slots;

        /// <summary>Reads and starts requests on this thread, with the ring reader's help, until
        /// the client hangs up (or sends DISC), breaks the protocol (thrown), or <c>stop</c>.</summary>
        public void Run(Microkernel kernel)
        {
            long nextAttach = 0;
            while (!_ended && !stop.IsCancellationRequested)
            {
                _failure?.Throw();
                if (!_threadsTurn && ReaderPolling())
                {
                    _turn.WaitOne(TimeSpan.FromMilliseconds(ReaderQuietMs));
                    continue;
                }

                if (!_attached && Environment.TickCount64 >= nextAttach)
                {
                    // Again after a host restart (the old reader detached it); tried at most once a
                    // second where there is no reader to attach to (or another connection has it).
                    nextAttach = Environment.TickCount64 + 1000;
                    _attached = true;
                    _attachment?.Dispose();
                    _attachment = kernel.AttachRingCompanion(export.Device, this);
                    if (_attachment is null)
                    {
                        _attached = false;
                    }
                    else
                    {
                        // (If the host went since, Detached has cleared _attached already.)
                        Interlocked.Increment(ref server._ringReaderAttachments);
                    }
                }

                bool wouldWait;
                lock (_gate)
                {
                    Pump(onReader: false, out wouldWait);
                }

                if (wouldWait && !_ended && !ReaderPolling())
                {
                    // Requests are in flight: the reader is about to spin for their answers. Wait
                    // for the client here, not in a receive under the gate (that would keep the
                    // reader out and have this thread woken for the next request after all).
                    socket.Poll(InFlightPollMicroseconds, SelectMode.SelectRead);
                }
            }

            _failure?.Throw();
        }

        /// <summary>No request is started after this; waits for every one started to finish.</summary>
        public void Close()
        {
            _attachment?.Dispose();
            Task[] running;
            lock (_gate)
            {
                _ended = true;
                running = [.. _running];
            }

            Task.WhenAll(running).GetAwaiter().GetResult();
        }

        /// <summary>A request has its answer (or will have none).</summary>
        public void Finished(ushort type, uint length)
        {
            Interlocked.Add(ref _bytesInFlight, -DataOf(type, length));
            Interlocked.Decrement(ref _requestsInFlight);
        }

        public bool Poll()
        {
            Volatile.Write(ref _lastPoll, Environment.TickCount64);
            if (_threadsTurn || _ended)
            {
                return false;
            }

            Volatile.Write(ref _readerPolls, 1);
            if (stop.IsCancellationRequested)
            {
                HandToThread();
                return false;
            }

            if (!_gate.TryEnter())
            {
                return false;
            }

            // A reply this thread finishes at once goes out from the pool: the reader never
            // waits on the client's socket.
            var wasReader = ReplyWriter.SetReader(true);
            (_pollStarted, _pollBytes) = (0, 0);
            try
            {
                return Pump(onReader: true, out _);
            }
#pragma warning disable CA1031 // Whatever the client did is this connection's end, not the reader's: its thread reports it.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                _failure = ExceptionDispatchInfo.Capture(ex);
                HandToThread();
                return false;
            }
            finally
            {
                ReplyWriter.SetReader(wasReader);
                _gate.Exit();
            }
        }

        public void Released()
        {
            Volatile.Write(ref _readerPolls, 0);
            Wake();
        }

        public void Detached()
        {
            _attached = false;
            Released();
        }

        public void Dispose()
        {
            _attachment?.Dispose();
            _turn.Dispose();
        }

        /// <summary>The bytes a request moves through the rings (none for FLUSH, TRIM).</summary>
        private static long DataOf(ushort type, uint length) => type is CmdRead or CmdWrite ? length : 0;

        private bool ReaderPolling() =>
            Volatile.Read(ref _readerPolls) == 1 && Environment.TickCount64 - Volatile.Read(ref _lastPoll) < ReaderQuietMs;

        private void HandToThread()
        {
            _threadsTurn = true;
            Wake();
        }

        private void Wake()
        {
            try
            {
                _turn.Set();
            }
            catch (ObjectDisposedException)
            {
                // The connection is done: a reader that read its companion just before it was
                // detached may still say it sleeps.
            }
        }

        /// <summary>
        /// Starts every whole request buffered, receives once what the socket holds, and starts
        /// what that completed; true if it started a request. On the reader it never blocks: it
        /// stops at a request that is not all here yet, hands a request to the connection's thread
        /// where it would have to wait for it, and stops after <see cref="MaxPerPoll"/> requests or
        /// <see cref="MaxBytesPerPoll"/> bytes. On the connection's thread, instead of blocking in
        /// a receive it returns with <paramref name="wouldWait"/> set while the reader polls or
        /// requests are in flight (its loop looks at the reader again, see <see cref="Run"/>).
        /// Called under the gate.
        /// </summary>
        private bool Pump(bool onReader, out bool wouldWait)
        {
            var started = false;
            var received = 0;
            wouldWait = false;
            while (!_ended)
            {
                if (StartBuffered(onReader, ref started) is not Buffered.Drained)
                {
                    return started; // Left to the connection's thread, or enough for one poll.
                }

                if (!onReader)
                {
                    // What the reader left to this thread is started: the reader may take over again.
                    _threadsTurn = false;
                }

                if (_ended || received > 0)
                {
                    break;
                }

                if (_start > 0)
                {
                    // A part of a request is left (or nothing): to the front, so the rest fits.
                    _buffer.AsSpan(_start, _end - _start).CopyTo(_buffer);
                    (_start, _end) = (0, _end - _start);
                }

                var want = _buffer.Length - _end;
                if (onReader)
                {
                    var available = socket.Available;
                    if (available == 0)
                    {
                        // Nothing to read. Now and then the reader looks whether the client hung
                        // up (a socket readable with nothing in it): its thread sees to that.
                        if (Environment.TickCount64 - _lastHangUpCheck >= 10)
                        {
                            _lastHangUpCheck = Environment.TickCount64;
                            if (socket.Poll(0, SelectMode.SelectRead) && socket.Available == 0)
                            {
                                HandToThread();
                            }
                        }

                        return started;
                    }

                    want = Math.Min(want, available);
                }
                else if ((ReaderPolling() || (_attached && Volatile.Read(ref _requestsInFlight) > 0)) && !socket.Poll(0, SelectMode.SelectRead))
                {
                    wouldWait = true;
                    return started;
                }

                // On this thread: blocks until the client sends or hangs up (at once if it did); the
                // reader cannot take anything meanwhile (the gate).
                received = socket.Receive(_buffer, _end, want, SocketFlags.None);
                if (received == 0)
                {
                    _ended = true;
                    Wake();
                    return _start == _end ? started : throw new EndOfStreamException("the client hung up in the middle of a request");
                }

                _end += received;
            }

            return started;
        }

        private enum Buffered
        {
            /// <summary>No whole request is left in the buffer.</summary>
            Drained,

            /// <summary>The reader left the next request to the connection's thread (it would have
            /// to wait for it).</summary>
            HandedOver,

            /// <summary>The reader started as much as one poll may.</summary>
            PollFull,
        }

        /// <summary>Starts the whole requests in the buffer (see <see cref="Buffered"/>).</summary>
        private Buffered StartBuffered(bool onReader, ref bool started)
        {
            while (!_ended && _end - _start >= RequestHeader)
            {
                var header = _buffer.AsSpan(_start, RequestHeader);
                if (BinaryPrimitives.ReadUInt32BigEndian(header) != RequestMagic)
                {
                    throw new NbdProtocolException("a request without its magic");
                }

                var flags = BinaryPrimitives.ReadUInt16BigEndian(header[4..]);
                var type = BinaryPrimitives.ReadUInt16BigEndian(header[6..]);
                var cookie = BinaryPrimitives.ReadUInt64BigEndian(header[8..]);
                var offset = BinaryPrimitives.ReadUInt64BigEndian(header[16..]);
                var length = BinaryPrimitives.ReadUInt32BigEndian(header[24..]);
                if (type == CmdDisconnect)
                {
                    _start += RequestHeader;
                    _ended = true;
                    Wake();
                    return Buffered.Drained;
                }

                if (type == CmdWrite && length > MaxRequest)
                {
                    throw new NbdProtocolException($"a write of {length} bytes, over the {MaxRequest} the client was told");
                }

                var data = type == CmdWrite ? (int)length : 0;
                if (onReader)
                {
                    var inFlight = Interlocked.Read(ref _bytesInFlight);
                    if ((type is CmdRead or CmdWrite && length > Chunk) || (inFlight > 0 && inFlight + DataOf(type, length) > ReaderBudget))
                    {
                        HandToThread();
                        return Buffered.HandedOver;
                    }

                    if (_pollStarted >= MaxPerPoll || (_pollStarted > 0 && _pollBytes + DataOf(type, length) > MaxBytesPerPoll))
                    {
                        return Buffered.PollFull;
                    }

                    if (_end - _start < RequestHeader + data)
                    {
                        // Its data is not all here yet (the buffer has room for it): the reader
                        // takes it once it is, or the connection's thread does.
                        return Buffered.Drained;
                    }

                    if (!slots.Wait(0))
                    {
                        HandToThread();
                        return Buffered.HandedOver;
                    }

                    _pollStarted++;
                    _pollBytes += DataOf(type, length);
                }

                _start += RequestHeader;
                byte[]? payload = null;
                if (type == CmdWrite)
                {
                    // Every byte is written over: the data, from the buffer and then (on the
                    // connection's thread) straight from the socket.
                    payload = GC.AllocateUninitializedArray<byte>(data);
                    var buffered = Math.Min(data, _end - _start);
                    _buffer.AsSpan(_start, buffered).CopyTo(payload);
                    _start += buffered;
                    ReceiveExactly(payload.AsSpan(buffered));
                }

                if (!onReader)
                {
                    // Once the request is all here (a client that hangs up in its data owes no slot).
                    slots.Wait(stop);
                }

                if (_start == _end)
                {
                    (_start, _end) = (0, 0);
                }

                Interlocked.Add(ref _bytesInFlight, DataOf(type, length));
                Interlocked.Increment(ref _requestsInFlight);
                if (onReader)
                {
                    Interlocked.Increment(ref server._takenByRingReader);
                }

                if (_running.Count >= MaxInFlight)
                {
                    _running.RemoveAll(t => t.IsCompleted);
                }

                // Owns the slot from here (it releases it, or its reply does).
                _running.Add(server.ServeRequestAsync(this, type, flags, cookie, offset, length, payload));
                started = true;
            }

            return Buffered.Drained;
        }

        private void ReceiveExactly(Span<byte> into)
        {
            for (var done = 0; done < into.Length;)
            {
                var received = socket.Receive(into[done..], SocketFlags.None);
                if (received == 0)
                {
                    _ended = true;
                    throw new EndOfStreamException("the client hung up in the middle of a write's data");
                }

                done += received;
            }
        }
    }
}
