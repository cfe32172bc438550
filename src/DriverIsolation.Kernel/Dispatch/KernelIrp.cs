namespace DriverIsolation.Kernel;

/// <summary>
/// The kernel's IRP: parameters, the system buffer's input copy, where the caller wants output,
/// which layer owns it now, the layers waiting to see it again (completion routines), and the
/// one completion the caller will get. <see cref="Gate"/> guards ownership and state changes.
/// </summary>
internal sealed class KernelIrp : IThreadPoolWorkItem
{
    /// <summary>The driver whose in-flight slot this request holds until it finishes.</summary>
    public KernelDriver? Admitted { get; set; }

    public KernelIrp(long id, FileObject file, MajorFunction majorFunction, byte minorFunction, long offset, int length,
        uint ioControlCode, ReadOnlyMemory<byte> input, Memory<byte> callerOutput, bool inlineContinuation = false)
    {
        Id = id;
        InlineContinuation = inlineContinuation;
        Completion = new(inlineContinuation ? TaskCreationOptions.None : TaskCreationOptions.RunContinuationsAsynchronously);
        File = file;
        MajorFunction = majorFunction;
        MinorFunction = minorFunction;
        Offset = offset;
        Length = length;
        IoControlCode = ioControlCode;
        Input = input;
        CallerOutput = callerOutput;
        OutputLength = callerOutput.Length;
        Layers = file.Device.Layers;
        OriginalOffset = offset;
        OriginalLength = length;
        OriginalInput = input;
    }

    public long Id { get; }

    /// <summary>The I/O manager that issued it (for its deadline and its caller's cancellation).</summary>
    public IoManager? Manager { get; init; }

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
    public long StartedAt { get; } = System.Diagnostics.Stopwatch.GetTimestamp();

    public FileObject File { get; }

    public KernelDevice Device => File.Device;

    /// <summary>The device stack as it was when the IRP entered (a filter attached later does
    /// not shift the layer indices of IRPs already in flight).</summary>
    public DeviceLayer[] Layers { get; }

    public MajorFunction MajorFunction { get; }

    public byte MinorFunction { get; }

    public long Offset { get; set; }

    public int Length { get; set; }

    public uint IoControlCode { get; }

    /// <summary>The kernel's copy of the caller's input (a filter may replace it on the way down).</summary>
    public ReadOnlyMemory<byte> Input { get; set; }

    public Memory<byte> CallerOutput { get; }

    /// <summary>The output buffer the in-kernel layers share (rented from the array pool), once
    /// one of them has it; returned when a driver completes the IRP.</summary>
    public byte[]? SystemOutput { get; set; }

    public long OriginalOffset { get; }

    public int OriginalLength { get; }

    public ReadOnlyMemory<byte> OriginalInput { get; }

    /// <summary>True for the kernel's own replay of a Create after a restart (no caller waits).</summary>
    public bool IsReplay { get; init; }

    /// <summary>Puts the IRP back as it entered the stack, to be issued again from the top (a
    /// retried idempotent request). Call under <see cref="Gate"/>.</summary>
    public void ResetToTop()
    {
        Layer = 0;
        CompletionLayers = null;
        Offset = OriginalOffset;
        Length = OriginalLength;
        Input = OriginalInput;
    }

    public int OutputLength { get; }

    /// <summary>The IRP's own monitor (no lock object per IRP: one allocation less per request).</summary>
    public object Gate => this;

    /// <summary>Index of the stack layer that owns the IRP now. Guarded by <see cref="Gate"/>.</summary>
    public int Layer { get; set; }

    /// <summary>Layers that passed the IRP down with a completion routine, nearest last.</summary>
    public Stack<int>? CompletionLayers { get; set; }

    /// <summary>Set once, by whoever completes the IRP to its caller. Guarded by <see cref="Gate"/>.</summary>
    public bool Completed { get; set; }

    public bool CancelRequested { get; set; }

    /// <summary>Waiting in a restarting driver's queue. Guarded by <see cref="Gate"/>.</summary>
    public bool Parked { get; set; }

    /// <summary>When the deadline passes (a <see cref="TimeProvider"/> timestamp); kept by the
    /// <see cref="DeadlineQueue"/>, as are the list links below.</summary>
    internal long DeadlineAt;

    internal KernelIrp? DeadlineNext;

    internal KernelIrp? DeadlinePrevious;

    /// <summary>The deadline list the IRP is in; null once it left it.</summary>
    internal object? DeadlineBucket;

    public CancellationTokenRegistration CallerCancellation { get; set; }

    /// <summary>The caller's task. Its continuations run on the thread pool, unless
    /// <see cref="InlineContinuation"/>: then they run on the thread that sets it.</summary>
    public TaskCompletionSource<IoResult> Completion { get; }

    /// <summary>The caller's continuation may run on a host channel's reader when the final
    /// completion arrives there (<see cref="KernelOptions.InlineCompletions"/>); finished anywhere
    /// else, the result is set on the thread pool (<see cref="Execute"/>).</summary>
    public bool InlineContinuation { get; }

    /// <summary>The result the pool sets (an IRP with <see cref="InlineContinuation"/> finished
    /// off a reader).</summary>
    internal IoResult PendingResult;

    /// <summary>Sets <see cref="PendingResult"/> on the caller's task (queued to the pool).</summary>
    void IThreadPoolWorkItem.Execute() => Completion.TrySetResult(PendingResult);
}
