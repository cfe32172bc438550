using System.Diagnostics;
using System.Globalization;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.Kernel;

/// <summary>
/// The I/O manager: sends IRPs down device stacks and brings completions back up, enforcing the
/// rules a driver cannot be trusted to keep.
/// <list type="bullet">
/// <item>Exactly once: an IRP completes to its caller once. A second completion, a completion
/// from a layer that does not own the IRP, or one for an IRP that was never dispatched is refused
/// and reported, never applied.</item>
/// <item>Ownership: only the layer that holds an IRP may complete it or pass it down, and only by
/// naming its own device.</item>
/// <item>Deadlines: every IRP completes with IoTimeout when its deadline passes.</item>
/// <item>Host loss: every IRP a dead host held completes with DriverProcessTerminated.</item>
/// </list>
/// No lock is held while calling into a host, so an in-kernel driver may complete inline.
/// </summary>
internal sealed class IoManager : IDisposable
{
    private readonly IrpTable _irps;
    private readonly KernelEventLog _events;
    private readonly ILogger _logger;
    private readonly KernelOptions _options;
    private long _lastIrpId;
    private long _duplicateDeliveries;
    private long _lastFileId;
    private volatile string? _bugCheck;

    public IoManager(TimeProvider time, KernelEventLog events, ILogger logger, KernelOptions options)
    {
        _events = events;
        _logger = logger;
        _options = options;
        _irps = new IrpTable(options.FinishedIrpMemory);
        InlineCompletions = options.InlineCompletions;
        _deadlines = new DeadlineQueue(time, static irp => irp.Manager!.OnDeadline(irp));
    }

    private readonly DeadlineQueue _deadlines;

    /// <summary><see cref="KernelOptions.InlineCompletions"/>, as it was when the kernel was made
    /// (the host channels start their stall watches by it).</summary>
    public bool InlineCompletions { get; }

    /// <summary>IRPs whose deadline is running (the kernel's own bookkeeping, for tests).</summary>
    public int DeadlinesRunning => _deadlines.Count;

    /// <summary>Stops the deadline timer (the kernel is going down).</summary>
    public void Dispose() => _deadlines.Dispose();

    public int OutstandingCount => _irps.Count;

    private int _snapshots;

    /// <summary>Something walks a snapshot of the outstanding IRPs now: an IRP it holds may
    /// finish meanwhile, so no finished IRP is reused until it is done.</summary>
    public bool SnapshotsRunning => Volatile.Read(ref _snapshots) != 0;

    /// <summary>The outstanding IRPs, for <paramref name="each"/>; no IRP is reused meanwhile.</summary>
    private void ForEachOutstanding(Func<KernelIrp, bool>? where, Action<KernelIrp> each)
    {
        Interlocked.Increment(ref _snapshots);
        try
        {
            foreach (var irp in _irps.Snapshot(where))
            {
                each(irp);
            }
        }
        finally
        {
            Interlocked.Decrement(ref _snapshots);
        }
    }

    /// <summary>Asks the drivers to cancel every request outstanding on a handle (CancelIo).</summary>
    public void CancelOutstanding(FileObject file) => ForEachOutstanding(irp => irp.File == file && !irp.IsReplay, Cancel);

    private long _hostMessages;

    /// <summary>Messages taken from driver hosts so far, every host together.</summary>
    public long HostMessages => Interlocked.Read(ref _hostMessages);

    /// <summary>A host channel counts each message it takes from its host.</summary>
    public void CountHostMessage() => Interlocked.Increment(ref _hostMessages);

    /// <summary>Completions delivered to a caller for an IRP that had already been delivered
    /// (among the recently finished ones): the exactly-once invariant, checked where it matters.
    /// Must stay 0.</summary>
    public long DuplicateDeliveries => Interlocked.Read(ref _duplicateDeliveries);

    /// <summary>Called when an IRP of a major function its driver marks critical passes its
    /// deadline (the kernel kills the host: a hang becomes a crash).</summary>
    public Action<DeviceLayer, KernelIrp>? OnCriticalTimeout { get; init; }

    /// <summary>A host's (or the in-kernel runtime's) fault shim injected a fault: driver id, the
    /// fault's index in the plan, its type, a description.</summary>
    public Action<int, int, string, string>? OnFaultInjected { get; init; }

    public string? BugCheckReason => _bugCheck;

    public FileObject NewFileObject(KernelDevice device, string openedAs) =>
        new(Interlocked.Increment(ref _lastFileId), device, openedAs);

    /// <summary>Creates an IRP, arms its deadline and caller cancellation, and sends it to the top
    /// of the device stack. The task completes exactly once.</summary>
    public ValueTask<IoResult> SubmitAsync(FileObject file, MajorFunction majorFunction, long offset, int length, uint ioControlCode,
        ReadOnlyMemory<byte> input, Memory<byte> output, CancellationToken cancellationToken)
    {
        if (_bugCheck is not null)
        {
            return ValueTask.FromResult(IoResult.FromStatus(NtStatus.SystemCrashed));
        }

        if (input.Length > _options.MaxTransferSize || output.Length > _options.MaxTransferSize)
        {
            return ValueTask.FromResult(IoResult.FromStatus(NtStatus.InvalidParameter));
        }

        var device = file.Device;
        if (device.Layers.Length == 0)
        {
            return ValueTask.FromResult(IoResult.FromStatus(NtStatus.DeviceNotReady));
        }

        var top = device.Layers[0].Driver;
        if (!top.TryAdmit(_options.MaxIrpsInFlightPerDriver))
        {
            return ValueTask.FromResult(IoResult.FromStatus(NtStatus.InsufficientResources));
        }

        // The system buffer: drivers get a copy, never the caller's memory.
        var systemInput = input.IsEmpty ? ReadOnlyMemory<byte>.Empty : input.ToArray();
        var irp = KernelIrp.Rent(Interlocked.Increment(ref _lastIrpId), file, majorFunction, 0, offset, length,
            ioControlCode, systemInput, output, this, InlineCompletions && device.Layers[0].Host.Isolation != IsolationModel.InKernel);
        irp.Admitted = top;
        var task = irp.Task;
        _irps.Add(irp);
        Interlocked.Increment(ref file.OutstandingCount);
        StartTrace(irp);
        _deadlines.Add(irp, device.RequestTimeout);
        if (cancellationToken.CanBeCanceled)
        {
            irp.CallerCancellation = cancellationToken.UnsafeRegister(static s => ((KernelIrp)s!).Manager!.Cancel((KernelIrp)s!), irp);
        }

        // Its deadline and cancellation are armed: from here on, finished by its driver, it may be
        // reused (and may be before this returns: the task was taken before it went anywhere).
        irp.MarkSetUp();
        SendToLayer(irp, 0, cancelAfterSend: false);
        return task;
    }

    /// <summary>Asks the layer that holds the IRP to cancel it. The driver decides (its cancel
    /// routine completes it); the deadline still bounds a driver that ignores the request. An IRP
    /// parked for a restarting driver is in the kernel's own queue: it is cancelled at once.</summary>
    public void Cancel(KernelIrp irp)
    {
        DeviceLayer layer;
        bool parked;
        lock (irp.Gate)
        {
            if (irp.Completed || irp.CancelRequested)
            {
                return;
            }

            irp.CancelRequested = true;
            parked = irp.Parked;
            irp.Completed |= parked;
            layer = irp.Layers[irp.Layer];
        }

        if (parked)
        {
            // It stays in the driver's queue; the release skips completed IRPs.
            Finish(irp, IoResult.FromStatus(NtStatus.Cancelled), ReadOnlyMemory<byte>.Empty);
            return;
        }

        layer.Host.Cancel(irp.Id, layer);
    }

    /// <summary>A host completes an IRP (or an in-kernel driver does, inline).</summary>
    public void OnComplete(IHostChannel from, long irpId, int deviceId, NtStatus status, long information, ReadOnlyMemory<byte> data)
    {
        if (!_irps.TryGet(irpId, out var irp))
        {
            RefuseUnknown(from, "completion", irpId);
            return;
        }

        string? refusal;
        var upper = -1;
        var reused = false;
        lock (irp.Gate)
        {
            // Found by its id, then finished and reused for another request before the gate.
            reused = irp.Id != irpId;
            refusal = reused ? null : CheckOwner(irp, from, deviceId) ?? CheckCompletion(irp, status, information, data);
            if (!reused && refusal is null)
            {
                if (irp.CompletionLayers is { Count: > 0 } waiting)
                {
                    upper = waiting.Pop();
                    irp.Layer = upper;
                }
                else
                {
                    irp.Completed = true;
                }
            }
        }

        if (reused)
        {
            RefuseUnknown(from, "completion", irpId);
            return;
        }

        if (refusal is not null)
        {
            Refuse(from, "completion", irpId, refusal);
            return;
        }

        Trace?.LayerLeft(irp, $"completed with {status}");
        if (upper < 0)
        {
            Finish(irp, new IoResult(status, information), data, driverCompleted: true);
            return;
        }

        var layer = irp.Layers[upper];
        if (!layer.Driver.IsRunning)
        {
            // The layer waiting for this result is gone, and with it its completion routine.
            if (!TryPark(irp, layer.Driver))
            {
                TryFinish(irp, IoResult.FromStatus(StatusWhileDown(layer.Driver)));
            }

            return;
        }

        Trace?.LayerEntered(irp, layer);
        layer.Host.LowerCompleted(irp, layer, status, information, data);
    }

    /// <summary>A host passes an IRP to the next lower layer of its stack (IoCallDriver).</summary>
    public void OnPassDown(IHostChannel from, long irpId, int deviceId, bool wantsCompletion, long offset, int length, ReadOnlyMemory<byte> input)
    {
        if (!_irps.TryGet(irpId, out var irp))
        {
            RefuseUnknown(from, "pass-down", irpId);
            return;
        }

        string? refusal;
        var lower = -1;
        var cancel = false;
        var reused = false;
        lock (irp.Gate)
        {
            reused = irp.Id != irpId;
            refusal = reused ? null : CheckOwner(irp, from, deviceId);
            if (refusal is null && !reused && irp.Layer + 1 >= irp.Layers.Length)
            {
                refusal = $"{irp.Device.Name} has no layer below {deviceId}";
            }
            else if (refusal is null && (length < 0 || input.Length > _options.MaxTransferSize))
            {
                refusal = $"bad parameters (length {length}, input {input.Length} bytes)";
            }

            if (!reused && refusal is null)
            {
                if (wantsCompletion)
                {
                    (irp.CompletionLayers ??= new Stack<int>()).Push(irp.Layer);
                }

                lower = irp.Layer + 1;
                irp.Layer = lower;
                irp.Offset = offset;
                irp.Length = length;
                irp.Input = input.IsEmpty ? ReadOnlyMemory<byte>.Empty : input.ToArray();
                cancel = irp.CancelRequested;
            }
        }

        if (reused)
        {
            RefuseUnknown(from, "pass-down", irpId);
            return;
        }

        if (refusal is not null)
        {
            Refuse(from, "pass-down", irpId, refusal);
            return;
        }

        Trace?.LayerLeft(irp, "passed down");

        SendToLayer(irp, lower, cancel);
    }

    /// <summary>A host is gone. Every IRP it held completes now with DriverProcessTerminated,
    /// or, if its driver retries idempotent requests and is restarting, waits for the new
    /// instance. (IRPs waiting in the dead host's completion routines are handled when the layer
    /// below finishes.) Returns how many IRPs were completed and how many parked.</summary>
    public (int Completed, int Parked) OnHostExited(IHostChannel host)
    {
        var completed = 0;
        var parked = 0;
        ForEachOutstanding(null, irp =>
        {
            KernelDriver? driver = null;
            lock (irp.Gate)
            {
                if (!irp.Completed && irp.Layers[irp.Layer].Host == host)
                {
                    driver = irp.Layers[irp.Layer].Driver;
                }
            }

            if (driver is null)
            {
                return;
            }

            if (TryPark(irp, driver))
            {
                parked++;
            }
            else if (TryFinish(irp, IoResult.FromStatus(NtStatus.DriverProcessTerminated)))
            {
                completed++;
            }
        });

        return (completed, parked);
    }

    /// <summary>The driver runs again: send every parked IRP from the top of its stack.</summary>
    public void ReleaseParked(IEnumerable<KernelIrp> parked)
    {
        foreach (var irp in parked)
        {
            bool cancelled;
            lock (irp.Gate)
            {
                irp.Parked = false;

                // Finished while it waited (deadline, cancellation): its caller has its answer,
                // and no driver may act on it now.
                if (irp.Completed)
                {
                    continue;
                }

                cancelled = irp.CancelRequested;
            }

            SendToLayer(irp, 0, cancelAfterSend: cancelled);
        }
    }

    /// <summary>The driver will not come back (quarantine, restart off): parked IRPs end now.</summary>
    public void FailParked(IEnumerable<KernelIrp> parked, NtStatus status)
    {
        foreach (var irp in parked)
        {
            TryFinish(irp, IoResult.FromStatus(status));
        }
    }

    /// <summary>Re-opens a file object on a restarted layer: a Create sent to that layer only, so
    /// the new instance builds the per-handle state the old one had (as shadow drivers replay).</summary>
    public ValueTask<IoResult> ReplayCreateAsync(FileObject file, int layerIndex)
    {
        var irp = KernelIrp.Rent(Interlocked.Increment(ref _lastIrpId), file, MajorFunction.Create, 0, 0, 0, 0,
            ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, this);
        irp.IsReplay = true;
        irp.Layer = layerIndex;
        var task = irp.Task;
        _irps.Add(irp);
        StartTrace(irp);
        _deadlines.Add(irp, file.Device.RequestTimeout);
        var layer = irp.Layers[layerIndex];
        Trace?.LayerEntered(irp, layer);
        layer.Host.Dispatch(irp, layer);
        return task;
    }

    /// <summary>A message for the IRP could not be sent (its host is gone): complete it now
    /// rather than leave it to its deadline.</summary>
    public void FailUndeliverable(KernelIrp irp)
    {
        var driver = irp.Layers[irp.Layer].Driver;
        if (!TryPark(irp, driver))
        {
            TryFinish(irp, IoResult.FromStatus(NtStatus.DriverProcessTerminated));
        }
    }

    /// <summary>The kernel goes down: an in-kernel driver faulted. Every caller gets SystemCrashed.</summary>
    /// <summary>The simulated hardware, once a driver declares some.</summary>
    public Hardware.Machine? Machine { get; set; }

    public void BugCheck(string reason)
    {
        if (Interlocked.CompareExchange(ref _bugCheck, reason, null) is not null)
        {
            return;
        }

        Log.BugCheck(_logger, reason);
        _events.Add(KernelEventKind.BugCheck, null, null, reason);
        ForEachOutstanding(null, irp => TryFinish(irp, IoResult.FromStatus(NtStatus.SystemCrashed)));
    }

    private void SendToLayer(KernelIrp irp, int index, bool cancelAfterSend)
    {
        var layer = irp.Layers[index];
        if (!layer.Driver.IsRunning)
        {
            if (!TryPark(irp, layer.Driver))
            {
                TryFinish(irp, IoResult.FromStatus(StatusWhileDown(layer.Driver)));
            }

            return;
        }

        // An in-kernel driver may complete the IRP inside Dispatch, and its caller reuse it for
        // another request: its id is taken first.
        var id = irp.Id;
        Trace?.LayerEntered(irp, layer);
        layer.Host.Dispatch(irp, layer);
        if (cancelAfterSend)
        {
            layer.Host.Cancel(id, layer);
        }
    }

    private void OnDeadline(KernelIrp irp)
    {
        DeviceLayer layer;
        bool parked;
        lock (irp.Gate)
        {
            if (irp.Completed)
            {
                return;
            }

            irp.Completed = true;
            parked = irp.Parked;
            layer = irp.Layers[irp.Layer];
        }

        Log.IrpTimedOut(_logger, irp.Id, irp.MajorFunction, irp.Device.Name, irp.Device.RequestTimeout);
        _events.Add(KernelEventKind.IrpTimedOut, layer.Driver.Name, irp.Id, $"{irp.MajorFunction} to {irp.Device.Name} passed its deadline of {irp.Device.RequestTimeout}");
        Finish(irp, IoResult.FromStatus(NtStatus.IoTimeout), ReadOnlyMemory<byte>.Empty);

        // A parked IRP waited for a restart, not for a hung driver: no kill, and no driver holds it.
        if (parked)
        {
            return;
        }

        if (layer.Driver.Manifest.Limits.Critical.Contains(irp.MajorFunction) && layer.Host.Isolation != IsolationModel.InKernel)
        {
            OnCriticalTimeout?.Invoke(layer, irp);
            return;
        }

        // Let the driver drop it; its completion, if it ever comes, is refused as late.
        layer.Host.Cancel(irp.Id, layer);
    }

    private static string? CheckOwner(KernelIrp irp, IHostChannel from, int deviceId)
    {
        if (irp.Completed)
        {
            return "the IRP is already completed";
        }

        var owner = irp.Layers[irp.Layer];
        if (owner.Host != from)
        {
            return $"the IRP is held by {owner.Driver.Name} in {owner.Host.Name}, not by this host";
        }

        return owner.DeviceId != deviceId
            ? $"the IRP is held by device {owner.DeviceId}, and the host named device {deviceId}"
            : null;
    }

    private static string? CheckCompletion(KernelIrp irp, NtStatus status, long information, ReadOnlyMemory<byte> data)
    {
        if (status == NtStatus.Pending)
        {
            return "a completion cannot carry Pending";
        }

        if (!Enum.IsDefined(status))
        {
            return string.Create(CultureInfo.InvariantCulture, $"status 0x{(uint)status:x8} is no status");
        }

        if (information < 0)
        {
            return $"negative information {information}";
        }

        if (data.Length > irp.OutputLength)
        {
            return $"{data.Length} bytes of data for a {irp.OutputLength}-byte buffer";
        }

        return irp.MajorFunction switch
        {
            _ when irp.MajorFunction.ReturnsData() && information > irp.OutputLength =>
                $"information {information} overstates the {irp.OutputLength}-byte buffer",
            MajorFunction.Write when information > irp.Length =>
                $"information {information} overstates the {irp.Length}-byte write",
            _ => null,
        };
    }

    private bool TryFinish(KernelIrp irp, IoResult result)
    {
        lock (irp.Gate)
        {
            if (irp.Completed)
            {
                return false;
            }

            irp.Completed = true;
        }

        Finish(irp, result, ReadOnlyMemory<byte>.Empty);
        return true;
    }

    /// <summary>Parks an IRP for a restarting driver that retries this kind of request. A Create
    /// is always retried under the retry policy: the handle is not open until it succeeds, and
    /// whatever a dead instance did with it died with that instance. The driver's gate makes
    /// parking and the restart's release of the queue mutually exclusive.</summary>
    private static bool TryPark(KernelIrp irp, KernelDriver driver)
    {
        var recovery = driver.Manifest.Recovery;
        if (irp.IsReplay || recovery.InFlight != InFlightPolicy.Retry
            || (irp.MajorFunction != MajorFunction.Create && !recovery.Idempotent.Contains(irp.MajorFunction)))
        {
            return false;
        }

        lock (driver.Gate)
        {
            if (driver.State != DriverState.Restarting)
            {
                return false;
            }

            lock (irp.Gate)
            {
                if (irp.Completed || irp.Parked)
                {
                    return true;
                }

                irp.Parked = true;
                irp.WasParked = true;
                irp.ResetToTop();
            }

            driver.Parked.Enqueue(irp);
            return true;
        }
    }

    /// <summary>What a request to a driver that is not running gets.</summary>
    private static NtStatus StatusWhileDown(KernelDriver driver) => driver.State switch
    {
        DriverState.Quarantined => NtStatus.DeviceQuarantined,
        DriverState.Failed => NtStatus.DriverProcessTerminated,
        _ => NtStatus.DeviceNotReady,
    };

    /// <summary>The kernel's activity source: every IRP is an activity while something listens.</summary>
    public static readonly ActivitySource Activities = new(KernelMetrics.MeterName);

    /// <summary>Gives a new IRP its trace context, when it is traced (a recorder is set) or
    /// something listens to <see cref="Activities"/>. The activity is a child of the caller's
    /// current one, so one trace spans the application, the kernel and every host.</summary>
    private void StartTrace(KernelIrp irp)
    {
        if (Trace is null && !Activities.HasListeners())
        {
            return;
        }

        var caller = Activity.Current;
        var activity = Activities.StartActivity($"{irp.MajorFunction} {irp.Device.Name}", ActivityKind.Internal);
        if (activity is not null)
        {
            // The IRP's activity ends on whichever thread finishes it, not in the caller's flow.
            Activity.Current = caller;
            activity.SetTag("drviso.irp", irp.Id);
            activity.SetTag("drviso.device", irp.Device.Name);
            activity.SetTag("drviso.function", irp.MajorFunction.ToString());
            if (activity.IdFormat == ActivityIdFormat.W3C)
            {
                irp.Activity = activity;
                irp.TraceParent = activity.Id;
                return;
            }

            activity.Stop();
            Activity.Current = caller;
        }

        if (Trace is not null)
        {
            var traceId = caller is { IdFormat: ActivityIdFormat.W3C } ? caller.TraceId : ActivityTraceId.CreateRandom();
            irp.TraceParent = $"00-{traceId.ToHexString()}-{ActivitySpanId.CreateRandom().ToHexString()}-01";
        }
    }

    private static void StopActivity(Activity activity, NtStatus status)
    {
        var current = Activity.Current;
        activity.SetTag("drviso.status", status.ToString());
        if (!status.IsSuccess())
        {
            activity.SetStatus(ActivityStatusCode.Error, status.ToString());
        }

        activity.Stop();
        Activity.Current = current;
    }

    /// <summary>A host's own timing of a traced IRP's stay in one of its layers. It carries no
    /// authority: one for an IRP the host does not hold, or with times outside the IRP's life, is
    /// dropped (and counted by the recorder).</summary>
    public void OnHostSpan(IHostChannel from, Protocol.HostSpan span)
    {
        if (Trace is not { } trace)
        {
            return;
        }

        if (!_irps.TryGet(span.IrpId, out var irp))
        {
            trace.RejectHostSpan();
            return;
        }

        bool owner;
        lock (irp.Gate)
        {
            if (irp.Id != span.IrpId)
            {
                trace.RejectHostSpan();
                return;
            }

            owner = CheckOwner(irp, from, span.DeviceId) is null;
        }

        trace.HostSpan(irp, from.ProcessId, owner, span);
    }

    /// <summary>Where IRPs are traced (null: not traced).</summary>
    public TraceRecorder? Trace { get; set; }

    /// <summary>Where completions are counted and timed (null: nowhere).</summary>
    public KernelMetrics? Metrics { get; set; }

    /// <summary>The one completion to the caller; only the thread that set Completed gets here.
    /// Nothing touches the IRP once its result is set: its caller may take it and the IRP be
    /// reused at once.</summary>
    private void Finish(KernelIrp irp, IoResult result, ReadOnlyMemory<byte> data, bool driverCompleted = false)
    {
        if (!_irps.Finish(irp, result.Status))
        {
            Interlocked.Increment(ref _duplicateDeliveries);
        }

        irp.Admitted?.Release();
        if (!irp.IsReplay)
        {
            Interlocked.Decrement(ref irp.File.OutstandingCount);
        }

        var deadlineQuiet = _deadlines.Remove(irp);
        var cancellation = irp.CallerCancellation;
        var cancellationQuiet = !cancellation.Token.CanBeCanceled || cancellation.Unregister();
        if (!data.IsEmpty)
        {
            data.Span[..Math.Min(data.Length, irp.CallerOutput.Length)].CopyTo(irp.CallerOutput.Span);
        }

        // The driver is done with it: the in-kernel layers' system buffer goes back to the pool.
        // (An IRP that ended without its driver, on a deadline, keeps its buffer: the driver may
        // still write to it.)
        if (driverCompleted && irp.SystemOutput is { } systemOutput)
        {
            irp.SystemOutput = null;
            System.Buffers.ArrayPool<byte>.Shared.Return(systemOutput);
        }

        irp.Device.Statistics.Record(result.Status);
        Metrics?.IrpCompleted(irp.Device.Name, irp.MajorFunction, result.Status, irp.StartedAt);
        Trace?.IrpFinished(irp, result.Status);
        if (irp.Activity is { } activity)
        {
            StopActivity(activity, result.Status);
        }

        // Reused once its caller has the result only if its driver completed it, on the one path
        // that holds it (not a sweep, a cancellation, a deadline or a failed send, whose callers
        // may still act on it), once it was set up, with no deadline callback or cancellation
        // running on it and no trace holding it.
        irp.MayBeReused(driverCompleted && deadlineQuiet && cancellationQuiet && Trace is null);
        if (!irp.InlineContinuation)
        {
            irp.SetResult(result);
            return;
        }

        // The caller's continuation runs on the host channel's reader that delivered the
        // completion, once that reader has let go of its locks; finished anywhere else (a
        // deadline, a cancellation, a dead host's sweep), its result is set on the pool, so no
        // caller's code runs on a timer or inside the kernel's bookkeeping.
        irp.PendingResult = result;
        if (!InlineCompletion.TryDefer(irp))
        {
            ThreadPool.UnsafeQueueUserWorkItem(irp, preferLocal: false);
        }
    }

    private void RefuseUnknown(IHostChannel from, string what, long irpId)
    {
        if (_irps.TryGetFinished(irpId, out var status))
        {
            if (status is NtStatus.IoTimeout or NtStatus.DriverProcessTerminated or NtStatus.SystemCrashed)
            {
                _events.Add(KernelEventKind.LateCompletion, from.Name, irpId, $"{what} after the kernel completed the IRP with {status}");
                from.CountRefusal();
                return;
            }

            Refuse(from, what, irpId, $"the IRP is already completed (with {status})");
            return;
        }

        Refuse(from, what, irpId, irpId > Volatile.Read(ref _lastIrpId) || irpId <= 0
            ? "the kernel never issued an IRP with this id"
            : "the IRP is not outstanding");
    }

    private void Refuse(IHostChannel from, string what, long irpId, string reason)
    {
        Log.CompletionRefused(_logger, what, irpId, from.Name, reason);
        _events.Add(KernelEventKind.CompletionRefused, from.Name, irpId, $"{what} refused: {reason}");
        from.CountRefusal();
    }
}
