namespace DriverIsolation;

/// <summary>
/// An I/O request packet as a driver sees it. The kernel owns the request; a driver may complete
/// it once, pass it down, or mark it pending and complete it later. Buffers are system buffers
/// (buffered I/O): the caller's memory is never handed to a driver.
/// </summary>
public sealed class Irp
{
    private readonly IDeviceStackPort _port;
    private Lock? _gate;
    private CancelRoutine? _cancelRoutine;
    private bool _cancelRequested;
    private bool _cancelRoutineTaken;
    private IoCompletionRoutine? _completionRoutine;
    private DeviceObject? _completionDevice;

    internal Irp(IDeviceStackPort port, DeviceObject device, long id, MajorFunction majorFunction, byte minorFunction, long fileId,
        long offset, int length, uint ioControlCode, Memory<byte> inputBuffer, Memory<byte> outputBuffer)
    {
        _port = port;
        Device = device;
        Id = id;
        MajorFunction = majorFunction;
        MinorFunction = minorFunction;
        FileId = fileId;
        Offset = offset;
        Length = length;
        IoControlCode = ioControlCode;
        InputBuffer = inputBuffer;
        OutputBuffer = outputBuffer;
    }

    /// <summary>The device (stack layer) this IRP was dispatched to.</summary>
    public DeviceObject Device { get; }

    /// <summary>The kernel's identifier for this request (unique per boot).</summary>
    public long Id { get; }

    public MajorFunction MajorFunction { get; }

    public byte MinorFunction { get; }

    /// <summary>The file object (open handle) the request came through.</summary>
    public long FileId { get; }

    /// <summary>Byte offset for Read and Write; a filter may change it before passing down.</summary>
    public long Offset { get; set; }

    /// <summary>Requested length for Read and Write; a filter may change it before passing down.</summary>
    public int Length { get; set; }

    public uint IoControlCode { get; }

    /// <summary>Write data, or control-request input.</summary>
    public Memory<byte> InputBuffer { get; internal set; }

    /// <summary>Where Read and control requests put their results; its length is what the caller asked for.</summary>
    public Memory<byte> OutputBuffer { get; }

    /// <summary>Set by <see cref="MarkPending"/>: completion will come later.</summary>
    public bool IsPending { get; private set; }

    /// <summary>True once the kernel asked to cancel the request (deadline, caller, handle close).</summary>
    public bool IsCancelled => Volatile.Read(ref _cancelRequested);

    /// <summary>Guards cancellation; made the first time a request uses it (most never do).</summary>
    private Lock Gate => _gate ?? Interlocked.CompareExchange(ref _gate, new Lock(), null) ?? _gate;

    /// <summary>IoMarkIrpPending: the dispatch routine returns Pending and completes later.</summary>
    public void MarkPending() => IsPending = true;

    /// <summary>IoCompleteRequest. Every call goes to the kernel, which applies the first and refuses
    /// (and reports) any other: exactly-once is the kernel's rule, not the driver's promise.</summary>
    public void Complete(NtStatus status, long information = 0) => _port.Complete(this, status, information);

    /// <summary>Lets the kernel cancel the request by running <paramref name="cancelRoutine"/>.
    /// Returns Cancelled (and keeps no routine) if the request was cancelled already: the caller
    /// completes it then.</summary>
    public NtStatus MarkCancelable(CancelRoutine cancelRoutine)
    {
        ArgumentNullException.ThrowIfNull(cancelRoutine);
        lock (Gate)
        {
            if (_cancelRequested)
            {
                return NtStatus.Cancelled;
            }

            _cancelRoutine = cancelRoutine;
            _cancelRoutineTaken = false;
            return NtStatus.Success;
        }
    }

    /// <summary>Takes the cancel routine back before completing. Returns Cancelled if the cancel
    /// routine already ran or is running: it owns the completion then, not the caller.</summary>
    public NtStatus UnmarkCancelable()
    {
        lock (Gate)
        {
            if (_cancelRoutineTaken)
            {
                return NtStatus.Cancelled;
            }

            _cancelRoutine = null;
            return NtStatus.Success;
        }
    }

    /// <summary>The runtime's side of cancellation: flag the request and run its routine, once.</summary>
    internal void RequestCancel()
    {
        CancelRoutine? routine;
        lock (Gate)
        {
            if (_cancelRequested)
            {
                return;
            }

            _cancelRequested = true;
            routine = _cancelRoutine;
            _cancelRoutine = null;
            _cancelRoutineTaken = routine is not null;
        }

        routine?.Invoke(this);
    }

    internal void SetCompletionRoutine(DeviceObject device, IoCompletionRoutine? routine)
    {
        _completionDevice = routine is null ? null : device;
        _completionRoutine = routine;
    }

    /// <summary>The runtime's side of a lower completion: run this layer's completion routine once.</summary>
    internal bool InvokeCompletionRoutine(IoResult lowerResult)
    {
        var routine = Interlocked.Exchange(ref _completionRoutine, null);
        if (routine is null || _completionDevice is null)
        {
            return false;
        }

        routine(_completionDevice, this, lowerResult);
        return true;
    }
}
