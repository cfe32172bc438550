using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.DriverHost;

/// <summary>
/// The host's side of the pipe: handshake, then <c>receive → dispatch → reply</c> until the kernel
/// says Shutdown or goes away. Driver routines (dispatch, completion, interrupt) run on the
/// thread pool so a slow driver does not hold up the pipe, the heartbeat or the other drivers of
/// a shared host; cancel routines run on the reader. With <see cref="HostDispatch.Inline"/> they
/// run on the thread that reads the pipe instead, which saves a thread hop per request; a routine
/// that holds that thread longer than the stall time (20 ms) gets it to itself, and a new reader
/// takes over the pipe. Runs over any <see cref="FrameConnection"/>, so tests can drive a host
/// without a process.
/// </summary>
public sealed class HostServer : IKernelLink
{
    /// <summary>The host's activity source: a traced IRP's stay in a layer here is an activity,
    /// child of the kernel's, while something in this process listens (the OTLP exporter).</summary>
    public const string ActivitySourceName = "DriverIsolation.DriverHost";

    private static readonly ActivitySource Activities = new(ActivitySourceName);

    private readonly ConcurrentDictionary<(long IrpId, int DeviceId), TracedStay> _traced = new();
    private int _tracedStays; // _traced's count, read without its locks on every completion
    private readonly FrameConnection _connection;
    private readonly string _hostName;
    private readonly DriverRuntime _runtime;

    private readonly HostDispatch _dispatch;
    private readonly TimeProvider _time;
    private readonly long _stallTicks;
    private readonly TimeSpan _stall;
    private readonly Lock _readerGate = new();
    private readonly TaskCompletionSource<int> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _readerGeneration;
    private long _inlineSince;
    private long _handoffs;
    private CancellationToken _stopping;

    // The stall watch ticks only while routines run inline: a check that finds none running stops
    // it (an idle host must not wake up a hundred times a second), the next routine starts it.
    private ITimer? _stallWatch;
    private bool _watchStopped;

    /// <param name="dispatch">Where drivers' routines run (see <see cref="HostDispatch"/>).</param>
    /// <param name="inlineStall">With inline dispatch: how long one routine may keep the pipe
    /// unread before another thread takes over reading it.</param>
    /// <param name="time">The clock that times a stalled routine (tests use a fake one).</param>
    public HostServer(FrameConnection connection, string hostName, LogLevel forwardLogLevel = LogLevel.Information,
        HostDispatch dispatch = HostDispatch.Pool, TimeSpan? inlineStall = null, TimeProvider? time = null)
    {
        _connection = connection;
        _hostName = hostName;
        _runtime = new DriverRuntime(this, (id, _) => new ForwardingLogger(this, id, forwardLogLevel));
        _dispatch = dispatch;
        _time = time ?? TimeProvider.System;
        _stall = inlineStall is { } stall && stall > TimeSpan.Zero ? stall : DefaultInlineStall;
        _stallTicks = (long)(_stall.TotalSeconds * _time.TimestampFrequency);
    }

    /// <summary>How long an inline routine may hold the pipe by default.</summary>
    public static readonly TimeSpan DefaultInlineStall = TimeSpan.FromMilliseconds(20);

    /// <summary>How many times a routine ran so long inline that another thread took over reading
    /// the pipe.</summary>
    public long ReaderHandoffs => Interlocked.Read(ref _handoffs);

    /// <summary>Runs the host until shutdown or loss of the kernel; returns the exit code.</summary>
    public async Task<int> RunAsync(byte[] token, CancellationToken cancellationToken = default)
    {
        _connection.Send(new Hello(ProtocolConstants.Version, token, Environment.ProcessId));
        var first = await _connection.ReadAsync(cancellationToken).ConfigureAwait(false);
        switch (first)
        {
            case Welcome:
                break;
            case Refused refused:
                await Console.Error.WriteLineAsync($"drvhost {_hostName}: refused by the kernel: {refused.Reason}").ConfigureAwait(false);
                return ExitCodes.Refused;
            case null:
                return ExitCodes.KernelGone;
            default:
                return ExitCodes.ProtocolError;
        }

        _stopping = cancellationToken;
        if (_dispatch == HostDispatch.Inline)
        {
            // Looks twice per stall period for a routine that has held the reader too long.
            lock (_readerGate)
            {
                _stallWatch = _time.CreateTimer(static s => ((HostServer)s!).CheckStall(), this, _stall / 2, _stall / 2);
            }
        }

        try
        {
            StartReader(0);
            return await _exit.Task.ConfigureAwait(false);
        }
        finally
        {
            lock (_readerGate)
            {
                _stallWatch?.Dispose();
            }
        }
    }

    private void StartReader(int generation) =>
        _ = ReadLoopAsync(generation).ContinueWith(
            static (t, s) =>
            {
                if (t.Exception?.InnerException is { } error)
                {
                    ((HostServer)s!)._exit.TrySetException(error);
                }
                else if (t.IsCanceled)
                {
                    ((HostServer)s!)._exit.TrySetCanceled();
                }
            },
            this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);

    /// <summary>One reader of the pipe. It runs routines inline; if one of them holds it past the
    /// stall time, <see cref="CheckStall"/> starts the next reader, and this one ends when the
    /// routine returns. Exactly one reader reads at any time.</summary>
    private async Task ReadLoopAsync(int generation)
    {
        if (generation > 0)
        {
            await Task.Yield();
        }

        while (true)
        {
            var message = await _connection.ReadAsync(_stopping).ConfigureAwait(false);
            switch (message)
            {
                case null:
                    _exit.TrySetResult(ExitCodes.KernelGone);
                    return;
                case ReceivedDispatch d:
                    if (!OnDispatch(d.Body, generation))
                    {
                        return;
                    }

                    break;
                case Dispatch d:
                    if (!OnDispatch(ReceivedDispatch.BodyOf(d), generation))
                    {
                        return;
                    }

                    break;
                case Cancel c:
                    // A cancel routine runs on the reader either way: it must not wait behind the routine
                    // it cancels.
                    if (!RunRoutine(static s => s.Runtime.Cancel(s.Message.IrpId, s.Message.DeviceId), (Runtime: _runtime, Message: c), generation, alwaysInline: true))
                    {
                        return;
                    }

                    break;
                case LowerCompleted { TraceParent: not null } lc:
                    var lowerStay = BeginStay(lc.IrpId, lc.DeviceId, "completion routine", lc.TraceParent);
                    if (!RunRoutine(
                            static s =>
                            {
                                s.Stay.RoutineStart = Stopwatch.GetTimestamp();
                                s.Runtime.LowerCompleted(s.Message.IrpId, s.Message.DeviceId, s.Message.Status, s.Message.Information, s.Message.Data.Span);
                                s.Stay.RoutineEnded();
                            },
                            (Runtime: _runtime, Message: lc, Stay: lowerStay), generation))
                    {
                        return;
                    }

                    break;
                case LowerCompleted lc:
                    if (!RunRoutine(
                            static s => s.Runtime.LowerCompleted(s.Message.IrpId, s.Message.DeviceId, s.Message.Status, s.Message.Information, s.Message.Data.Span),
                            (Runtime: _runtime, Message: lc), generation))
                    {
                        return;
                    }

                    break;
                case Ping ping:
                    // The exact count (it stops the runtime a moment) only for a barrier, where it is measured.
                    _connection.Send(new Pong(ping.Sequence, Environment.WorkingSet, GC.GetTotalAllocatedBytes(precise: ping.Sequence < 0)));
                    break;
                case LoadDriver load:
                    var loaded = _runtime.LoadDriver(load.DriverId, load.Name, load.AssemblyPath, load.TypeName, load.Parameters, load.Faults, load.Injectable);
                    _connection.Send(new DriverLoaded(load.DriverId, loaded.Status, loaded.Detail));
                    break;
                case AddDevice add:
                    var added = _runtime.AddDevice(add.DriverId, add.DeviceId, add.Name, add.DeviceType, add.HasLowerDevice, add.Parameters, add.Hardware);
                    _connection.Send(new DeviceAdded(add.DeviceId, added.Status, added.Detail));
                    break;
                case Interrupt interrupt:
                    if (!RunRoutine(static s => s.Runtime.Interrupt(s.Message.DeviceId, s.Message.Vector), (Runtime: _runtime, Message: interrupt), generation))
                    {
                        return;
                    }

                    break;
                case PrepareDriver prepare:
                    if (_runtime.PrepareDriver(prepare.Name, prepare.AssemblyPath, prepare.TypeName) is { } notPrepared)
                    {
                        await Console.Error.WriteLineAsync($"drvhost {_hostName}: {notPrepared}").ConfigureAwait(false);
                    }

                    break;
                case ArmFault arm:
                    if (_runtime.ArmFault(arm.DriverId, arm.Fault) is { } notArmed)
                    {
                        _connection.Send(new Log(arm.DriverId, (int)LogLevel.Warning, $"fault {arm.Fault.Fault} not armed: {notArmed}"));
                    }

                    break;
                case Shutdown:
                    _runtime.UnloadAll();
                    _exit.TrySetResult(ExitCodes.Shutdown);
                    return;
                default:
                    await Console.Error.WriteLineAsync($"drvhost {_hostName}: unexpected {message.GetType().Name} from the kernel").ConfigureAwait(false);
                    _exit.TrySetResult(ExitCodes.ProtocolError);
                    return;
            }
        }
    }

    /// <summary>Runs a driver routine: inline on the reader (then true if this reader still
    /// reads when it returns), or on the thread pool (always true).</summary>
    private bool RunRoutine<TState>(Action<TState> routine, TState state, int generation, bool alwaysInline = false)
    {
        if (_dispatch == HostDispatch.Pool && !alwaysInline)
        {
            ThreadPool.UnsafeQueueUserWorkItem(routine, state, preferLocal: false);
            return true;
        }

        // A full fence between marking the routine and looking at the watch, as CheckStall has
        // between stopping the watch and looking at the mark: one of the two sees the other.
        Interlocked.Exchange(ref _inlineSince, _time.GetTimestamp());
        if (Volatile.Read(ref _watchStopped))
        {
            StartWatch();
        }

        try
        {
            routine(state);
        }
#pragma warning disable CA1031 // Rethrown as unhandled, below.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            CrashAsUnhandled(ex);
        }

        lock (_readerGate)
        {
            _inlineSince = 0;
            return _readerGeneration == generation;
        }
    }

    /// <summary>The stall watch: a routine has held the reader past the stall time, so another
    /// thread takes over the pipe (the routine goes on, as it would on the pool).</summary>
    private void CheckStall()
    {
        int next;
        lock (_readerGate)
        {
            var since = Volatile.Read(ref _inlineSince);
            if (since == 0)
            {
                // No routine running: stop until the next one starts (unless one just did).
                Volatile.Write(ref _watchStopped, true);
                Interlocked.MemoryBarrier();
                if (Volatile.Read(ref _inlineSince) != 0)
                {
                    _watchStopped = false;
                }
                else
                {
                    _stallWatch?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                }

                return;
            }

            if (_time.GetTimestamp() - since < _stallTicks || _exit.Task.IsCompleted)
            {
                return;
            }

            _inlineSince = 0;
            next = ++_readerGeneration;
            Interlocked.Increment(ref _handoffs);
        }

        StartReader(next);
    }

    /// <summary>Starts the stall watch again, stopped while no routine ran.</summary>
    private void StartWatch()
    {
        lock (_readerGate)
        {
            if (_watchStopped)
            {
                _watchStopped = false;
                _stallWatch?.Change(_stall / 2, _stall / 2);
            }
        }
    }

    /// <summary>A driver's exception is what it would be on a pool thread: unhandled, and the
    /// end of this host (the kernel sees it exit, aborted).</summary>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void CrashAsUnhandled(Exception ex)
    {
        var thread = new Thread(() => System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(ex));
        thread.Start();
        thread.Join();
        throw new InvalidOperationException("unreachable: the host ends with an unhandled exception", ex);
    }

    private bool OnDispatch(in DispatchBody d, int generation)
    {
        // A new buffer per IRP, not a pooled one: a driver that completes an IRP and goes on
        // writing to it (a double completion) must not write into another request's buffer.
        var output = d.OutputLength > 0 ? new byte[d.OutputLength] : Memory<byte>.Empty;
        var irp = _runtime.Accept(d.IrpId, d.DeviceId, d.MajorFunction, d.MinorFunction, d.FileId, d.Offset, d.Length,
            d.IoControlCode, MemoryMarshal.AsMemory(d.Input), output);
        if (irp is null)
        {
            return true;
        }

        if (d.TraceParent is null)
        {
            return RunRoutine(static irp => DriverRuntime.Invoke(irp), irp, generation);
        }

        var stay = BeginStay(d.IrpId, d.DeviceId, d.MajorFunction.ToString(), d.TraceParent);
        return RunRoutine(
            static s =>
            {
                s.Stay.RoutineStart = Stopwatch.GetTimestamp();
                DriverRuntime.Invoke(s.Irp);
                s.Stay.RoutineEnded();
            },
            (Irp: irp, Stay: stay), generation);
    }

    /// <summary>A traced IRP arrived at a layer here: its stay is timed from now (and is an
    /// activity, child of the kernel's span, if something listens).</summary>
    private TracedStay BeginStay(long irpId, int deviceId, string what, string traceParent)
    {
        var name = $"{_runtime.DriverNameOf(deviceId) ?? "?"}: {what}";
        Activity? activity = null;
        if (Activities.HasListeners() && ActivityContext.TryParse(traceParent, null, isRemote: true, out var parent))
        {
            var current = Activity.Current;
            activity = Activities.StartActivity(name, ActivityKind.Server, parent);
            Activity.Current = current;
            activity?.SetTag("drviso.irp", irpId);
        }

        var stay = new TracedStay(name, Stopwatch.GetTimestamp(), activity);
        if (_traced.TryAdd((irpId, deviceId), stay))
        {
            Interlocked.Increment(ref _tracedStays);
        }

        return stay;
    }

    /// <summary>The stay ends, if this request has a traced one: completed with a status, or passed
    /// down (null). The kernel gets the host's timing of it before the message that ends it. The
    /// outcome's text is made only then, not for every completion.</summary>
    private void EndStay(long irpId, int deviceId, NtStatus? completedWith)
    {
        if (Volatile.Read(ref _tracedStays) == 0 || !_traced.TryRemove((irpId, deviceId), out var stay))
        {
            return;
        }

        Interlocked.Decrement(ref _tracedStays);
        var outcome = completedWith is { } status ? $"completed with {status}" : "passed down";

        var ended = Stopwatch.GetTimestamp();
        var (routineStart, routineEnd) = stay.Routine(ended);
        var spanId = stay.Activity?.SpanId.ToHexString() ?? ActivitySpanId.CreateRandom().ToHexString();
        if (stay.Activity is { } activity)
        {
            var current = Activity.Current;
            activity.SetTag("drviso.outcome", outcome);
            activity.Stop();
            Activity.Current = current;
        }

        _connection.Send(new HostSpan(irpId, deviceId, stay.Name, spanId, stay.Received, routineStart, routineEnd, ended, outcome));
    }

    void IKernelLink.Complete(long irpId, int deviceId, NtStatus status, long information, ReadOnlyMemory<byte> data)
    {
        EndStay(irpId, deviceId, status);
        _connection.Send(new CompleteBody(irpId, deviceId, status, information, data));
    }

    void IKernelLink.PassDown(long irpId, int deviceId, bool wantsCompletion, long offset, int length, ReadOnlyMemory<byte> input)
    {
        EndStay(irpId, deviceId, completedWith: null);
        _connection.Send(new PassDown(irpId, deviceId, wantsCompletion, offset, length, input));
    }

    /// <summary>One traced stay: when the host read the request, and when the driver's routine
    /// ran (it may still be running when it completes the IRP inline: the routine then counts
    /// until that completion).</summary>
    private sealed class TracedStay(string name, long received, Activity? activity)
    {
        private long _routineStart;
        private long _routineEnd;

        public string Name { get; } = name;

        public long Received { get; } = received;

        public Activity? Activity { get; } = activity;

        public long RoutineStart
        {
            set => Volatile.Write(ref _routineStart, value);
        }

        public void RoutineEnded() => Volatile.Write(ref _routineEnd, Stopwatch.GetTimestamp());

        public (long Start, long End) Routine(long now)
        {
            var start = Volatile.Read(ref _routineStart);
            var end = Volatile.Read(ref _routineEnd);
            return start == 0 ? (0, 0) : (start, end == 0 ? now : end);
        }
    }

    void IKernelLink.Log(int driverId, LogLevel level, string message) =>
        _connection.Send(new Log(driverId, (int)level, message));

    void IKernelLink.DmaMap(int deviceId, int firstPage, int pages, DmaAccess access) =>
        _connection.Send(new DmaMap(deviceId, firstPage, pages, access));

    void IKernelLink.DmaUnmap(int deviceId, int firstPage, int pages) =>
        _connection.Send(new DmaUnmap(deviceId, firstPage, pages));

    void IKernelLink.WriteRegister(int deviceId, int registerIndex, ulong value) =>
        _connection.Send(new RegisterWrite(deviceId, registerIndex, value));

    void IKernelLink.FaultInjected(int driverId, int index, string fault, string detail) =>
        _connection.SendAndWait(new FaultInjected(driverId, index, fault, detail), TimeSpan.FromSeconds(2));

    bool IKernelLink.SendMalformedFrame(ReadOnlySpan<byte> bytes) => _connection.SendRaw(bytes);

    /// <summary>A host has no mapping of the kernel's memory.</summary>
    bool IKernelLink.WriteKernelMemory(ulong physicalAddress, ulong value) => false;
}
