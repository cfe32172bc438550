using System.Collections.Concurrent;
using System.Diagnostics;
using DriverIsolation.DriverHost;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.Kernel;

/// <summary>
/// A drvhost process and its pipe, seen from the kernel. One receive loop reads the host's frames
/// (every byte untrusted) and hands them to the I/O manager; anything that is not a valid message
/// in its place is a protocol violation and kills the host. Exit is noticed both from the pipe and
/// from the process, and reported once, with the reason; a host the kernel kills is reported gone
/// at the SIGKILL, without waiting for the OS to tear it down.
/// </summary>
internal sealed class ProcessHostChannel : IHostChannel
{
    private readonly Process _process;
    private readonly FrameConnection _connection;
    private readonly IoManager _io;
    private readonly KernelEventLog _events;
    private readonly ILogger _logger;
    private readonly Action<ProcessHostChannel, string> _onExited;
    private readonly ConcurrentDictionary<int, TaskCompletionSource<(NtStatus, string?)>> _pendingLoads = new();
    private readonly ConcurrentDictionary<int, TaskCompletionSource<(NtStatus, string?)>> _pendingDevices = new();
    private readonly TaskCompletionSource<string> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _reported = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _handling = new();
    private volatile string? _killReason;
    private int _exitReported;
    private int _exitProcessed;
    private HeartbeatMonitor? _heartbeat;
    private RateLimit? _logLimit;
    private RateLimit? _refusalLimit;
    private int _maxLogLines;
    private int _violated;
    private int _maxRefusals;
    private KernelOptions? _options;

    public ProcessHostChannel(string name, IsolationModel isolation, Process process, FrameConnection connection, IoManager io,
        KernelEventLog events, ILogger logger, Action<ProcessHostChannel, string> onExited)
    {
        Name = name;
        Isolation = isolation;
        _process = process;
        ProcessId = process.Id;
        _connection = connection;
        _io = io;
        _events = events;
        _logger = logger;
        _onExited = onExited;
    }

    /// <summary>The host's name; a pooled host takes its driver's name when it is handed out.</summary>
    public string Name { get; set; }

    public IsolationModel Isolation { get; }

    public int ProcessId { get; }

    /// <summary>True once the kernel sends to this host on the shared-memory ring.</summary>
    public bool UsesRing => _connection.UsesRing;

    public bool IsAlive => Volatile.Read(ref _exitReported) == 0;

    /// <summary>The drivers the kernel asked this host to load: the only ones it may speak for.</summary>
    private readonly Dictionary<int, string> _driverIds = [];

    /// <summary>Completes once the host's exit has been reported to the kernel (its IRPs swept,
    /// its drivers told), whether at a kill or at its exit.</summary>
    public Task ExitReported => _reported.Task;

    /// <summary>Completes with the exit reason once the process has exited and its IRPs are
    /// completed (a host the kernel killed is reported gone earlier, at the SIGKILL).</summary>
    public Task<string> Exited => _exited.Task;

    /// <summary>Starts the receive loop and the process-exit watch (after the handshake).</summary>
    public void Start(TimeProvider time, KernelOptions options)
    {
        _options = options;
        _maxLogLines = options.MaxLogLinesPerSecond;
        _maxRefusals = options.MaxRefusalsPerSecond;
        _logLimit = new RateLimit(time, options.MaxLogLinesPerSecond, options.MaxLogLinesPerSecond);
        _refusalLimit = new RateLimit(time, options.MaxRefusalsPerSecond, options.MaxRefusalsPerSecond);
        if (_io.InlineCompletions)
        {
            // Looks twice per stall period for a caller's continuation that has held the reader
            // too long (so it is handed off between one and one and a half stall periods).
            _time = time;
            var stall = options.InlineStall > TimeSpan.Zero ? options.InlineStall : DriverHost.HostServer.DefaultInlineStall;
            _stallTicks = (long)(stall.TotalSeconds * time.TimestampFrequency);
            _watchPeriod = TimeSpan.FromTicks(Math.Max(stall.Ticks / 2, TimeSpan.TicksPerMillisecond));
            lock (_readerGate)
            {
                _stallWatch = time.CreateTimer(static s => ((ProcessHostChannel)s!).CheckStall(), this, _watchPeriod, _watchPeriod);
            }
        }

        _ = DoReceiveAsync(0, _readerBatch);
        _ = WatchProcessAsync();
    }

    private TimeProvider _time = TimeProvider.System;
    private ITimer? _stallWatch;
    private long _stallTicks;
    private readonly Lock _readerGate = new();
    private bool _inlineRunning;
    private bool _watchStopped;
    private TimeSpan _watchPeriod;
    private long _inlineSince;
    private int _readerGeneration;

    /// <summary>What continuations left to the current reader (a new one for each reader).</summary>
    private CompletionBatch _readerBatch = new();
    private long _handoffs;

    /// <summary>How many times a caller's continuation held this host's reader so long that
    /// another thread took over reading (<see cref="KernelOptions.InlineCompletions"/>).</summary>
    public long ReaderHandoffs => Interlocked.Read(ref _handoffs);

    /// <summary>Completes a caller's IRP on the reader (its continuation runs here); true if this
    /// reader still reads when it returns.</summary>
    private bool CompleteInline(KernelIrp irp, int generation, CompletionBatch batch)
    {
        lock (_readerGate)
        {
            _inlineSince = _time.GetTimestamp();
            _inlineRunning = true;
            if (_watchStopped)
            {
                _watchStopped = false;
                _stallWatch?.Change(_watchPeriod, _watchPeriod);
            }
        }

        Interlocked.Increment(ref _completedInline);
        batch.Enter();
        try
        {
            InlineCompletion.Run(irp);
        }
        finally
        {
            CompletionBatch.Leave();
        }

        lock (_readerGate)
        {
            // Handed off meanwhile: the running marker is the next reader's now, not this one's.
            if (_readerGeneration != generation)
            {
                return false;
            }

            _inlineRunning = false;
            return true;
        }
    }

    private long _completedInline;

    /// <summary>Has this host's ring reader poll <paramref name="companion"/> while it spins (see
    /// <see cref="FrameConnection.TryAttach"/>).</summary>
    internal bool TryAttach(IRingCompanion companion) => IsAlive && _connection.TryAttach(companion);

    internal void Detach(IRingCompanion companion) => _connection.Detach(companion);

    /// <summary>A caller's continuation runs on this host's reader now (the reader has not yet
    /// taken back its running marker after one).</summary>
    internal bool RunningInline
    {
        get
        {
            lock (_readerGate)
            {
                return _inlineRunning;
            }
        }
    }

    /// <summary>Runs what callers' continuations left to this reader (<see cref="CompletionBatch"/>).</summary>
    private void FlushBatch(CompletionBatch batch) => batch.Flush(_flushFailed ??= ex => Log.BatchFlushFailed(_logger, ex, Name));

    private Action<Exception>? _flushFailed;

    /// <summary>Callers' continuations run on this host's reader so far (<see cref="KernelOptions.InlineCompletions"/>).</summary>
    public long CompletedInline => Interlocked.Read(ref _completedInline);

    /// <summary>The stall watch: a caller's continuation has held the reader past the stall time,
    /// so another thread takes over reading the host (the continuation goes on, as it would on the
    /// pool).</summary>
    private void CheckStall()
    {
        int next;
        CompletionBatch stalled, batch;
        lock (_readerGate)
        {
            if (!_inlineRunning)
            {
                // Nothing running inline: the watch stops until a continuation runs inline again
                // (an idle host's reader must not wake the kernel a hundred times a second).
                _watchStopped = true;
                _stallWatch?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                return;
            }

            if (_time.GetTimestamp() - _inlineSince < _stallTicks || _killReason is not null)
            {
                return;
            }

            _inlineRunning = false;
            next = ++_readerGeneration;
            Interlocked.Increment(ref _handoffs);
            (stalled, batch) = (_readerBatch, _readerBatch = new CompletionBatch());
        }

        // On the pool, not on the clock's thread (nor in whatever context its caller has). What
        // earlier continuations left to the held reader does not wait for it either.
        ThreadPool.UnsafeQueueUserWorkItem(static s => _ = s.Channel.DoReceiveAsync(s.Next, s.Batch), (Channel: this, Next: next, Batch: batch), preferLocal: false);
        ThreadPool.UnsafeQueueUserWorkItem(static s => s.Channel.FlushBatch(s.Stalled), (Channel: this, Stalled: stalled), preferLocal: false);
    }

    /// <summary>Starts heartbeats; <paramref name="onWatchdogKill"/> hears why the host was killed.</summary>
    public void StartHeartbeat(TimeProvider time, TimeSpan period, long? memoryBudget, int handleBudget, Action<ProcessHostChannel, string> onWatchdogKill) =>
        _heartbeat = new HeartbeatMonitor(time, period, memoryBudget, Ping, reason =>
        {
            onWatchdogKill(this, reason);
            Kill($"watchdog: {reason}");
        }, handleBudget, () => HostUsage.Of(ProcessId));

    /// <summary>The heartbeat's next periodic check of this host (<see cref="HeartbeatMonitor.NextCheckAsync"/>);
    /// null at once without heartbeats.</summary>
    public Task<string?> NextWatchdogCheckAsync() => _heartbeat?.NextCheckAsync() ?? Task.FromResult<string?>(null);

    public Task<(NtStatus Status, string? Detail)> LoadDriverAsync(KernelDriver driver, string assemblyPath, CancellationToken cancellationToken)
    {
        var pending = NewPending(_pendingLoads, driver.Id);
        lock (_driverIds)
        {
            _driverIds[driver.Id] = driver.Name;
        }

        if ((driver.Manifest.Transport ?? _options?.Transport) == Transport.Ring && !_connection.UsesRing && _options is { } options)
        {
            _connection.OfferRing(options.RingDirectory ?? (Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath()), options.RingCapacityBytes, options.RingSpin);
        }

        var faults = driver.FaultsForLoad();
        Send(new LoadDriver(driver.Id, driver.Name, assemblyPath, driver.Manifest.Type, new Dictionary<string, string>(driver.Manifest.Parameters),
            faults.Length > 0 ? faults : null, driver.Injectable));
        return pending.Task.WaitAsync(cancellationToken);
    }

    public Task<(NtStatus Status, string? Detail)> AddDeviceAsync(KernelDriver driver, DeviceLayer layer, KernelDevice device, bool hasLowerDevice,
        IReadOnlyDictionary<string, string> parameters, HardwareBinding? hardware, CancellationToken cancellationToken)
    {
        var pending = NewPending(_pendingDevices, layer.DeviceId);
        Send(new AddDevice(driver.Id, layer.DeviceId, device.Name, device.DeviceType, hasLowerDevice, new Dictionary<string, string>(parameters), hardware));
        return pending.Task.WaitAsync(cancellationToken);
    }

    public void Dispatch(KernelIrp irp, DeviceLayer layer)
    {
        if (!_connection.Send(new DispatchBody(irp.Id, layer.DeviceId, irp.MajorFunction, irp.MinorFunction, irp.File.Id, irp.Offset,
                irp.Length, irp.IoControlCode, irp.Input, irp.OutputLength, irp.TraceParent)))
        {
            Undeliverable(irp);
        }
    }

    public void Cancel(long irpId, DeviceLayer layer) => Send(new Protocol.Cancel(irpId, layer.DeviceId));

    public void ArmFault(KernelDriver driver, FaultSpec fault) => Send(new Protocol.ArmFault(driver.Id, fault));

    public void Interrupt(int deviceId, int vector) => Send(new Protocol.Interrupt(deviceId, vector));

    public void LowerCompleted(KernelIrp irp, DeviceLayer layer, NtStatus status, long information, ReadOnlyMemory<byte> data)
    {
        if (!Send(new Protocol.LowerCompleted(irp.Id, layer.DeviceId, status, information, data, irp.TraceParent)))
        {
            Undeliverable(irp);
        }
    }

    /// <summary>The pipe is closed, so the host is dying. Until its exit is processed the IRP is
    /// left where it is: the exit sweep completes or parks every IRP this host holds, by policy.
    /// Once the exit has been processed, the sweep is over and the IRP is handled here.</summary>
    private void Undeliverable(KernelIrp irp)
    {
        if (Volatile.Read(ref _exitProcessed) != 0)
        {
            _io.FailUndeliverable(irp);
        }
    }

    public void Ping(long sequence) => Send(new Ping(sequence));

    private readonly ConcurrentDictionary<long, TaskCompletionSource> _barriers = new();
    private long _lastBarrier;

    /// <summary>A warm host loads drivers ahead of time (see <see cref="PrepareDriver"/>). Completes
    /// once the host has done it (a ping with a negative sequence behind the requests: the host
    /// answers in order), or has exited, or <paramref name="timeout"/> passed.</summary>
    public async Task PrepareAsync(IReadOnlyList<PrepareDriver> prepares, TimeSpan timeout, CancellationToken cancellationToken)
    {
        foreach (var prepare in prepares)
        {
            Send(prepare);
        }

        await BarrierAsync(timeout, cancellationToken).ConfigureAwait(false);
    }

    private long _allocatedBytes = -1;

    /// <summary>The bytes the host's runtime has allocated since it started, as it reports them
    /// now (after everything sent to it before); null if it did not answer in time or is gone.
    /// Hosts report what they say: this is for measuring, never for trusting.</summary>
    public async Task<long?> AllocatedBytesAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        Volatile.Write(ref _allocatedBytes, -1);
        return await BarrierAsync(timeout, cancellationToken).ConfigureAwait(false) && Volatile.Read(ref _allocatedBytes) is >= 0 and var bytes
            ? bytes
            : null;
    }

    /// <summary>A ping with a negative sequence: the host answers in order, so its pong says it
    /// has handled everything sent before. True once it came; false if the host exited first, or
    /// <paramref name="timeout"/> passed.</summary>
    private async Task<bool> BarrierAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var sequence = -Interlocked.Increment(ref _lastBarrier);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _barriers[sequence] = done;
        if (Volatile.Read(ref _exitReported) != 0 || !Send(new Ping(sequence)))
        {
            _barriers.TryRemove(sequence, out _);
            return false;
        }

        try
        {
            await done.Task.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            // Not prepared in time: a restart in this host loads the driver itself.
            return false;
        }
        finally
        {
            _barriers.TryRemove(sequence, out _);
        }
    }

    public void CountRefusal()
    {
        if (_refusalLimit?.TryTake() == false)
        {
            Violation($"refusal flood: more than {_maxRefusals} refused messages a second");
        }
    }

    public void Kill(string reason)
    {
        _killReason ??= reason;

        // Stopped first (frozen, SIGKILLed a moment later: see DyingProcess), then the pipe dropped:
        // the host must not run again before anything else happens. (drvhost starts no processes
        // of its own, so there is no tree to walk.)
        var killed = false;
        try
        {
            if (!_process.HasExited)
            {
                if (!DyingProcess.Freeze(_process))
                {
                    _process.Kill();
                }

                killed = true;
            }
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }

        _connection.Abort(reason);

        // The host is dead from here on: neither SIGSTOP nor SIGKILL can be caught, and a thread
        // of it still on a CPU is interrupted at once. The OS takes a while longer to tear the
        // process down once it is SIGKILLed (its address space goes first, then its pipe and its
        // exit status: 10-20 ms for a .NET process on these machines), and recovery need not wait
        // for that. The real exit, when it comes, completes Exited.
        if (killed)
        {
            _ = Task.Run(() =>
            {
                // A frame the receive loop was handling when the kill came is finished first; none
                // is handled after (it checks the kill reason under the same lock).
                lock (_handling)
                {
                }

                // Exited by itself just before the kill: its own exit code, not SIGKILL's. (Already
                // reported at its exit: nothing to do, and the process may be disposed by now.)
                if (Volatile.Read(ref _exitReported) == 0)
                {
                    var code = _process.HasExited ? _process.ExitCode : ExitCodes.Killed;
                    ReportExit($"{_killReason} ({ExitCodes.Describe(code)})");
                }
            });
        }
    }

    /// <summary>Asks the host to unload its drivers and exit; kills it if it does not within
    /// <paramref name="grace"/>.</summary>
    public async Task StopAsync(TimeSpan grace)
    {
        if (IsAlive)
        {
            _killReason ??= "stopped by the kernel";
            Send(new Shutdown("kernel shutdown"));
            try
            {
                await _process.WaitForExitAsync().WaitAsync(grace).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                Kill("did not stop when asked");
            }
        }

        // A host frozen by a kill is reaped now: nothing waits for its replacement any more.
        DyingProcess.Reap(_process);
        await _exited.Task.ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        _process.Dispose();
    }

    private bool Send(Message message) => _connection.Send(message);

    /// <summary>One reader of the host's frames. With inline completions, if a caller's
    /// continuation holds it past the stall time, <see cref="CheckStall"/> starts the next reader
    /// (generation + 1), and this one ends when the continuation returns: exactly one reads at any
    /// time.</summary>
    private async Task DoReceiveAsync(int generation, CompletionBatch batch)
    {
        var handedOff = false;
        try
        {
            // Nothing more is taken from a host once it is condemned, even frames already buffered
            // (a kill during the read is seen before its frame is handled; the report of a killed
            // host waits for a frame being handled, see Kill).
            while (_killReason is null && await _connection.ReadAsync().ConfigureAwait(false) is { } message)
            {
                var go = false;
                KernelIrp? finished = null;
                lock (_handling)
                {
                    if (_killReason is null)
                    {
                        InlineCompletion.Begin();
                        var handled = false;
                        try
                        {
                            go = Handle(message);
                            handled = true;
                        }
                        finally
                        {
                            finished = InlineCompletion.End();
                            if (!handled && finished is not null)
                            {
                                // The caller is owed its result whatever went wrong after it.
                                ThreadPool.UnsafeQueueUserWorkItem(finished, preferLocal: false);
                                finished = null;
                            }
                        }
                    }
                }

                // The caller's continuation, outside the lock (it may send, or close its handle).
                if (finished is not null && !CompleteInline(finished, generation, batch))
                {
                    // Held past the stall time: the next reader reads on, and this one is done.
                    handedOff = true;
                    return;
                }

                // What the continuations left waits for the frames already behind them, no longer.
                if (batch.Pending && !_connection.FrameWaiting)
                {
                    FlushBatch(batch);
                }

                if (!go)
                {
                    break;
                }
            }
        }
        catch (ProtocolException ex)
        {
            Violation(ex.Message);
        }
        catch (ObjectDisposedException)
        {
            // Killed: the exit path reports.
        }
#pragma warning disable CA1031 // Whatever goes wrong with one host's messages, the kernel must not go down with it.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Violation($"the kernel could not handle a message from this host: {ex.GetType().Name}: {ex.Message}");
        }
        finally
        {
            FlushBatch(batch);

            // A host without its pipe is of no use to anyone: make sure it is gone.
            if (!handedOff && !_process.HasExited)
            {
                try
                {
                    await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    Kill(_killReason ?? "closed its pipe but did not exit");
                }
            }
        }
    }

    private bool Handle(Message message)
    {
        _io.CountHostMessage();
        switch (message)
        {
            case ReceivedComplete c:
                _io.OnComplete(this, c.IrpId, c.DeviceId, c.Status, c.Information, c.Data);
                return true;
            case Protocol.Complete c:
                _io.OnComplete(this, c.IrpId, c.DeviceId, c.Status, c.Information, c.Data);
                return true;
            case Protocol.PassDown p:
                _io.OnPassDown(this, p.IrpId, p.DeviceId, p.WantsCompletion, p.Offset, p.Length, p.Input);
                return true;
            case FaultInjected fault:
                lock (_driverIds)
                {
                    if (!_driverIds.ContainsKey(fault.DriverId))
                    {
                        Violation($"FaultInjected for driver {fault.DriverId}, which is not in this host");
                        return false;
                    }
                }

                _io.OnFaultInjected?.Invoke(fault.DriverId, fault.Index, fault.Fault, fault.Detail.Length > 512 ? fault.Detail[..512] : fault.Detail);
                return true;
            case HostSpan span:
                _io.OnHostSpan(this, span);
                return true;
            case Pong { Sequence: < 0 } barrier:
                Volatile.Write(ref _allocatedBytes, barrier.AllocatedBytes);
                if (_barriers.TryRemove(barrier.Sequence, out var done))
                {
                    done.TrySetResult();
                }

                return true;
            case Pong pong:
                _heartbeat?.OnPong(pong.Sequence, pong.WorkingSetBytes);
                return true;
            case Protocol.Log when _logLimit?.TryTake() == false:
                Violation($"log flood: more than {_maxLogLines} log lines a second");
                return false;
            case Protocol.Log log:
                var level = log.Level is >= 0 and <= (int)LogLevel.Critical ? (LogLevel)log.Level : LogLevel.Information;
                string? driverName;
                lock (_driverIds)
                {
                    driverName = _driverIds.GetValueOrDefault(log.DriverId);
                }

                // Under the name of the driver that wrote it (a shared host holds several).
                Log.DriverLog(_logger, level, driverName ?? Name, log.Message.Length > 4096 ? log.Message[..4096] : log.Message);
                return true;
            case DmaMap map:
                return Hardware(_io.Machine?.Map(this, map.DeviceId, map.FirstPage, map.Pages, map.Access));
            case DmaUnmap unmap:
                return Hardware(_io.Machine?.Unmap(this, unmap.DeviceId, unmap.FirstPage, unmap.Pages));
            case RegisterWrite write:
                return Hardware(_io.Machine?.WriteRegister(this, write.DeviceId, write.Register, write.Value));
            case DriverLoaded loaded:
                return Answer(_pendingLoads, loaded.DriverId, (loaded.Status, loaded.Detail), nameof(DriverLoaded));
            case DeviceAdded added:
                return Answer(_pendingDevices, added.DeviceId, (added.Status, added.Detail), nameof(DeviceAdded));
            default:
                Violation($"a host may not send {message.GetType().Name}");
                return false;
        }
    }

    // A DMA or register request the kernel cannot honour names something that is not the host's:
    // a protocol violation (and without a machine, no host has hardware to name).
    private bool Hardware(string? error)
    {
        if (error is null && _io.Machine is not null)
        {
            return true;
        }

        Violation(error ?? "a DMA or register request, but no device has hardware");
        return false;
    }

    private bool Answer(ConcurrentDictionary<int, TaskCompletionSource<(NtStatus, string?)>> pending, int id, (NtStatus, string?) result, string what)
    {
        if (pending.TryRemove(id, out var waiter))
        {
            waiter.TrySetResult(result);
            return true;
        }

        Violation($"{what} for id {id}, which the kernel never asked about");
        return false;
    }

    /// <summary>Something outside the message stream showed the host breaking the rules.</summary>
    public void ReportViolation(string reason) => Violation(reason);

    private void Violation(string reason)
    {
        if (Interlocked.Exchange(ref _violated, 1) != 0)
        {
            return;
        }

        Log.ProtocolViolation(_logger, Name, reason);
        _events.Add(KernelEventKind.ProtocolViolation, Name, null, reason);
        Kill($"protocol violation: {reason}");
    }

    private async Task WatchProcessAsync()
    {
        await _process.WaitForExitAsync().ConfigureAwait(false);
        _connection.Abort("host process exited");
        var reason = _killReason is { } killed
            ? $"{killed} ({ExitCodes.Describe(_process.ExitCode)})"
            : ExitCodes.Describe(_process.ExitCode);
        ReportExit(reason);
        await _reported.Task.ConfigureAwait(false);
        _exited.TrySetResult(reason);
    }

    /// <summary>The host is gone: fail what waits on it, and let the kernel sweep its IRPs and
    /// recover its drivers. Once, whether the kernel killed it or saw it exit.</summary>
    private void ReportExit(string reason)
    {
        if (Interlocked.Exchange(ref _exitReported, 1) != 0)
        {
            return;
        }

        _heartbeat?.Dispose();
        _stallWatch?.Dispose();
        foreach (var waiter in _pendingLoads.Values.Concat(_pendingDevices.Values))
        {
            waiter.TrySetResult((NtStatus.DriverProcessTerminated, $"host exited: {reason}"));
        }

        foreach (var barrier in _barriers.Values)
        {
            barrier.TrySetResult();
        }

        try
        {
            _onExited(this, reason);
        }
        finally
        {
            Volatile.Write(ref _exitProcessed, 1);
            _reported.TrySetResult();
        }
    }

    /// <summary>A request to the host that waits for its answer. Registered before the exit
    /// check: either the exit path sees it, or it sees the exit (a load sent to a host that
    /// already died must not wait forever).</summary>
    private TaskCompletionSource<(NtStatus, string?)> NewPending(ConcurrentDictionary<int, TaskCompletionSource<(NtStatus, string?)>> pending, int id)
    {
        var waiter = new TaskCompletionSource<(NtStatus, string?)>(TaskCreationOptions.RunContinuationsAsynchronously);
        pending[id] = waiter;
        if (Volatile.Read(ref _exitReported) != 0)
        {
            waiter.TrySetResult((NtStatus.DriverProcessTerminated, "the host had already exited"));
        }

        return waiter;
    }
}
