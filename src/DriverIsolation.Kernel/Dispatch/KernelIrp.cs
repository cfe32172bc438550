using System.Collections.Concurrent;
using System.Threading.Tasks.Sources;

namespace DriverIsolation.Kernel;

/// <summary>
/// The kernel's IRP: parameters, the system buffer's input copy, where the caller wants output,
/// which layer owns it now, the layers waiting to see it again (completion routines), and the
/// one completion the caller will get. <see cref="Gate"/> guards ownership and state changes.
/// </summary>
/// <remarks>
/// IRPs are reused: the caller's <see cref="ValueTask{TResult}"/> is the IRP itself, and once the
/// caller has taken the result (<see cref="GetResult"/>) the IRP goes back to a pool, unless
/// something other than the I/O manager's own path may still hold it (see
/// <see cref="MayBeReused"/>). A reused IRP gets a new <see cref="Id"/>, so anything that looks an
/// IRP up by id (a host's completion) never finds the old request in it.
/// </remarks>
internal sealed class KernelIrp : IThreadPoolWorkItem, IValueTaskSource<IoResult>
{
    /// <summary>The driver whose in-flight slot this request holds until it finishes.</summary>
    public KernelDriver? Admitted { get; set; }

    private KernelIrp()
    {
    }

    /// <summary>A fresh IRP from the pool (or a new one), set up for one request.</summary>
    public static KernelIrp Rent(long id, FileObject file, MajorFunction majorFunction, byte minorFunction, long offset, int length,
        uint ioControlCode, ReadOnlyMemory<byte> input, Memory<byte> callerOutput, IoManager? manager, bool inlineContinuation = false)
    {
        var irp = TakeSpare() ?? new KernelIrp();

        // Under the gate: a thread that found the old request by its id before it finished checks
        // the id again under the gate, and sees all of the old request or all of the new one.
        lock (irp.Gate)
        {
            irp.Id = id;
            irp.Manager = manager;
            irp.InlineContinuation = inlineContinuation;
            irp._source.RunContinuationsAsynchronously = !inlineContinuation;
            irp.File = file;
            irp.MajorFunction = majorFunction;
            irp.MinorFunction = minorFunction;
            irp.Offset = offset;
            irp.Length = length;
            irp.IoControlCode = ioControlCode;
            irp.Input = input;
            irp.CallerOutput = callerOutput;
            irp.OutputLength = callerOutput.Length;
            irp.Layers = file.Device.Layers;
            irp.OriginalOffset = offset;
            irp.OriginalLength = length;
            irp.OriginalInput = input;
            irp.StartedAt = System.Diagnostics.Stopwatch.GetTimestamp();
            irp.Layer = 0;
            irp.Completed = false;
            irp.CancelRequested = false;
            irp.Parked = false;
            irp.WasParked = false;
            irp.IsReplay = false;
            irp.DeadlineFired = false;
            irp._resultSet = 0;
            irp._reusable = false;
            irp._setUp = false;
        }

        return irp;
    }

    public long Id { get; private set; }

    /// <summary>The I/O manager that issued it (for its deadline and its caller's cancellation).</summary>
    public IoManager? Manager { get; private set; }

    /// <summary>The layer the IRP is in now, for the trace (when it was sent there, the host's
    /// PID, the driver); null while no trace is recorded.</summary>
    public (long Since, int Pid, string Driver)? TraceLayer { get; set; }

    /// <summary>The IRP's activity, while something listens to the kernel's activity source
    /// (OpenTelemetry, dotnet-trace); stopped when the IRP finishes.</summary>
    public System.Diagnostics.Activity? Activity { get; set; }

    /// <summary>The IRP's W3C trace context (<c>00-trace-span-01</c>), sent to every host it
    /// visits, while the IRP is traced; null otherwise.</summary>
    public string? TraceParent { get; set; }

    /// <summary>When the IRP entered the kernel (a Stopwatch timestamp), for its duration.</summary>
    public long StartedAt { get; private set; }

    public FileObject File { get; private set; } = null!;

    public KernelDevice Device => File.Device;

    /// <summary>The device stack as it was when the IRP entered (a filter attached later does
    /// not shift the layer indices of IRPs already in flight).</summary>
    public DeviceLayer[] Layers { get; private set; } = [];

    public MajorFunction MajorFunction { get; private set; }

    public byte MinorFunction { get; private set; }

    public long Offset { get; set; }

    public int Length { get; set; }

    public uint IoControlCode { get; private set; }

    /// <summary>The kernel's copy of the caller's input (a filter may replace it on the way down).</summary>
    public ReadOnlyMemory<byte> Input { get; set; }

    public Memory<byte> CallerOutput { get; private set; }

    /// <summary>The output buffer the in-kernel layers share (rented from the array pool), once
    /// one of them has it; returned when a driver completes the IRP.</summary>
    public byte[]? SystemOutput { get; set; }

    public long OriginalOffset { get; private set; }

    public int OriginalLength { get; private set; }

    public ReadOnlyMemory<byte> OriginalInput { get; private set; }

    /// <summary>True for the kernel's own replay of a Create after a restart (no caller waits).</summary>
    public bool IsReplay { get; set; }

    /// <summary>Puts the IRP back as it entered the stack, to be issued again from the top (a
    /// retried idempotent request). Call under <see cref="Gate"/>.</summary>
    public void ResetToTop()
    {
        Layer = 0;
        CompletionLayers?.Clear();
        Offset = OriginalOffset;
        Length = OriginalLength;
        Input = OriginalInput;
    }

    public int OutputLength { get; private set; }

    /// <summary>The IRP's own monitor (no lock object per IRP: one allocation less per request).</summary>
    public object Gate => this;

    /// <summary>Index of the stack layer that owns the IRP now. Guarded by <see cref="Gate"/>.</summary>
    public int Layer { get; set; }

    /// <summary>Layers that passed the IRP down with a completion routine, nearest last (kept,
    /// emptied, when the IRP is reused).</summary>
    public Stack<int>? CompletionLayers { get; set; }

    /// <summary>Set once, by whoever completes the IRP to its caller. Guarded by <see cref="Gate"/>.</summary>
    public bool Completed { get; set; }

    public bool CancelRequested { get; set; }

    /// <summary>Waiting in a restarting driver's queue. Guarded by <see cref="Gate"/>.</summary>
    public bool Parked { get; set; }

    /// <summary>It was parked once: the driver's queue may still hold it, so it is never reused.</summary>
    public bool WasParked { get; set; }

    /// <summary>When the deadline passes (a <see cref="TimeProvider"/> timestamp); kept by the
    /// <see cref="DeadlineQueue"/>, as are the list links below.</summary>
    internal long DeadlineAt;

    internal KernelIrp? DeadlineNext;

    internal KernelIrp? DeadlinePrevious;

    /// <summary>The deadline list the IRP is in; null once it left it.</summary>
    internal object? DeadlineBucket;

    /// <summary>The deadline queue took it out to expire it (its callback may still be running).</summary>
    internal volatile bool DeadlineFired;

    public CancellationTokenRegistration CallerCancellation { get; set; }

    /// <summary>The caller's continuation may run on a host channel's reader when the final
    /// completion arrives there (<see cref="KernelOptions.InlineCompletions"/>); finished anywhere
    /// else, the result is set on the thread pool (<see cref="Execute"/>). Otherwise the
    /// continuation always runs on the pool.</summary>
    public bool InlineContinuation { get; private set; }

    /// <summary>The result the pool sets (an IRP with <see cref="InlineContinuation"/> finished
    /// off a reader).</summary>
    internal IoResult PendingResult;

    private ManualResetValueTaskSourceCore<IoResult> _source;
    private int _resultSet;
    private bool _reusable;
    private bool _setUp;

    /// <summary>What the caller awaits: this IRP, until it takes the result.</summary>
    public ValueTask<IoResult> Task => new(this, _source.Version);

    /// <summary>Completes the caller's task (only the first call counts).</summary>
    public void SetResult(IoResult result)
    {
        if (Interlocked.Exchange(ref _resultSet, 1) == 0)
        {
            _source.SetResult(result);
        }
    }

    /// <summary>Marks the IRP for reuse once its caller has the result: called by the one thread
    /// that finishes it, before it sets the result, with what that thread knows (its driver
    /// completed it, the deadline will not fire on it, no cancellation callback ran, nothing traces
    /// it). Never an IRP finished before its set-up was done (a host completing an id it was not
    /// sent yet), parked once, asked to cancel, or replayed.</summary>
    public void MayBeReused(bool reusable) =>
        _reusable = reusable && Volatile.Read(ref _setUp) && !WasParked && !CancelRequested && !IsReplay && Activity is null;

    /// <summary>The I/O manager has armed the IRP's deadline and caller cancellation.</summary>
    public void MarkSetUp() => Volatile.Write(ref _setUp, true);

    /// <summary>Sets <see cref="PendingResult"/> on the caller's task (queued to the pool).</summary>
    void IThreadPoolWorkItem.Execute() => SetResult(PendingResult);

    IoResult IValueTaskSource<IoResult>.GetResult(short token)
    {
        var result = _source.GetResult(token);
        if (_reusable && Manager is { SnapshotsRunning: false })
        {
            Recycle();
        }

        return result;
    }

    ValueTaskSourceStatus IValueTaskSource<IoResult>.GetStatus(short token) => _source.GetStatus(token);

    void IValueTaskSource<IoResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _source.OnCompleted(continuation, state, token, flags);

    // Spare IRPs: one per thread (a caller that issues its next request where the last one
    // completed takes back the same IRP), then a shared queue.
    private const int MaxSharedSpares = 1024;

    [ThreadStatic]
    private static KernelIrp? t_spare;

    private static readonly ConcurrentQueue<KernelIrp> s_spares = new();
    private static int s_spareCount;

    private static KernelIrp? TakeSpare()
    {
        if (t_spare is { } spare)
        {
            t_spare = null;
            return spare;
        }

        if (s_spares.TryDequeue(out spare))
        {
            Interlocked.Decrement(ref s_spareCount);
            return spare;
        }

        return null;
    }

    private void Recycle()
    {
        // No buffer of the request is kept alive by a spare. (Its id, file and stack stay until
        // the next request: a thread that found it by the old id sees it completed, under the gate.)
        _reusable = false;
        Admitted = null;
        Input = OriginalInput = default;
        CallerOutput = default;
        SystemOutput = null;
        TraceLayer = null;
        TraceParent = null;
        CallerCancellation = default;
        CompletionLayers?.Clear();
        _source.Reset();
        if (t_spare is null)
        {
            t_spare = this;
        }
        else if (Interlocked.Increment(ref s_spareCount) <= MaxSharedSpares)
        {
            s_spares.Enqueue(this);
        }
        else
        {
            Interlocked.Decrement(ref s_spareCount);
        }
    }
}
