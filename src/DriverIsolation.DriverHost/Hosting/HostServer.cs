using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.DriverHost;

/// <summary>
/// The host's side of the pipe: handshake, then <c>receive → dispatch → reply</c> until the kernel
/// says Shutdown or goes away. Driver routines run on the thread pool so a slow driver does not
/// hold up the pipe, the heartbeat or the other drivers of a shared host. Runs over any
/// <see cref="FrameConnection"/>, so tests can drive a host without a process.
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

    public HostServer(FrameConnection connection, string hostName, LogLevel forwardLogLevel = LogLevel.Information)
    {
        _connection = connection;
        _hostName = hostName;
        _runtime = new DriverRuntime(this, (id, _) => new ForwardingLogger(this, id, forwardLogLevel));
    }

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

        while (true)
        {
            var message = await _connection.ReadAsync(cancellationToken).ConfigureAwait(false);
            switch (message)
            {
                case null:
                    return ExitCodes.KernelGone;
                case Dispatch d:
                    OnDispatch(d);
                    break;
                case Cancel c:
                    _runtime.Cancel(c.IrpId, c.DeviceId);
                    break;
                case LowerCompleted { TraceParent: not null } lc:
                    var lowerStay = BeginStay(lc.IrpId, lc.DeviceId, "completion routine", lc.TraceParent);
                    ThreadPool.UnsafeQueueUserWorkItem(
                        static s =>
                        {
                            s.Stay.RoutineStart = Stopwatch.GetTimestamp();
                            s.Runtime.LowerCompleted(s.Message.IrpId, s.Message.DeviceId, s.Message.Status, s.Message.Information, s.Message.Data.Span);
                            s.Stay.RoutineEnded();
                        },
                        (Runtime: _runtime, Message: lc, Stay: lowerStay), preferLocal: false);
                    break;
                case LowerCompleted lc:
                    ThreadPool.UnsafeQueueUserWorkItem(
                        static s => s.Runtime.LowerCompleted(s.Message.IrpId, s.Message.DeviceId, s.Message.Status, s.Message.Information, s.Message.Data.Span),
                        (Runtime: _runtime, Message: lc), preferLocal: false);
                    break;
                case Ping ping:
                    _connection.Send(new Pong(ping.Sequence, Environment.WorkingSet));
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
                    ThreadPool.UnsafeQueueUserWorkItem(
                        static s => s.Runtime.Interrupt(s.Message.DeviceId, s.Message.Vector), (Runtime: _runtime, Message: interrupt), preferLocal: false);
                    break;
                case ArmFault arm:
                    if (_runtime.ArmFault(arm.DriverId, arm.Fault) is { } notArmed)
                    {
                        _connection.Send(new Log(arm.DriverId, (int)LogLevel.Warning, $"fault {arm.Fault.Fault} not armed: {notArmed}"));
                    }

                    break;
                case Shutdown:
                    _runtime.UnloadAll();
                    return ExitCodes.Shutdown;
                default:
                    await Console.Error.WriteLineAsync($"drvhost {_hostName}: unexpected {message.GetType().Name} from the kernel").ConfigureAwait(false);
                    return ExitCodes.ProtocolError;
            }
        }
    }

    private void OnDispatch(Dispatch d)
    {
        // The output buffer comes from the pool, zeroed (a driver must not see an earlier
        // request's bytes), and goes back once the driver completed the IRP and the reply is sent.
        byte[]? rented = null;
        var output = Memory<byte>.Empty;
        if (d.OutputLength > 0)
        {
            rented = ArrayPool<byte>.Shared.Rent(d.OutputLength);
            output = rented.AsMemory(0, d.OutputLength);
            output.Span.Clear();
        }

        var irp = _runtime.Accept(d.IrpId, d.DeviceId, d.MajorFunction, d.MinorFunction, d.FileId, d.Offset, d.Length,
            d.IoControlCode, MemoryMarshal.AsMemory(d.Input), output, rented);
        if (irp is null)
        {
            return;
        }

        if (d.TraceParent is null)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static irp => DriverRuntime.Invoke(irp), irp, preferLocal: false);
            return;
        }

        var stay = BeginStay(d.IrpId, d.DeviceId, d.MajorFunction.ToString(), d.TraceParent);
        ThreadPool.UnsafeQueueUserWorkItem(
            static s =>
            {
                s.Stay.RoutineStart = Stopwatch.GetTimestamp();
                DriverRuntime.Invoke(s.Irp);
                s.Stay.RoutineEnded();
            },
            (Irp: irp, Stay: stay), preferLocal: false);
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

    /// <summary>The stay ends (completed or passed down): the kernel gets the host's timing of it
    /// before the message that ends it.</summary>
    private void EndStay(long irpId, int deviceId, string outcome)
    {
        if (Volatile.Read(ref _tracedStays) == 0 || !_traced.TryRemove((irpId, deviceId), out var stay))
        {
            return;
        }

        Interlocked.Decrement(ref _tracedStays);

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
        EndStay(irpId, deviceId, $"completed with {status}");
        _connection.Send(new Complete(irpId, deviceId, status, information, data));
    }

    void IKernelLink.PassDown(long irpId, int deviceId, bool wantsCompletion, long offset, int length, ReadOnlyMemory<byte> input)
    {
        EndStay(irpId, deviceId, "passed down");
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
