namespace DriverIsolation.Kernel;

/// <summary>
/// One host's heartbeat: every period a Ping goes out; a host with two Pings unanswered when the
/// next period comes is hung and is killed (MINIX turns a missed heartbeat into a kill, so hangs
/// and crashes share one recovery path). Each period the kernel also measures the host itself
/// (resident memory and open handles, as the operating system counts them: a host cannot lie
/// about those) and checks them against its budgets; the working set each Pong reports is checked
/// too. Time comes from the injected <see cref="TimeProvider"/>.
/// </summary>
internal sealed class HeartbeatMonitor : IDisposable
{
    public const int MissedBeforeKill = 2;

    private readonly Action<long> _sendPing;
    private readonly Action<string> _kill;
    private readonly long? _memoryBudget;
    private readonly int? _handleBudget;
    private readonly Func<HostUsage?> _measure;
    private readonly TimeSpan _period;
    private readonly Lock _gate = new();
    private readonly ITimer _timer;
    private long _sent;
    private long _answered;
    private string? _endReason; // Set once: why the host will not run on (the watchdog killed it, or it is gone).
    private TaskCompletionSource<string?> _nextCheck = NewCheck();

    public HeartbeatMonitor(TimeProvider time, TimeSpan period, long? memoryBudget, Action<long> sendPing, Action<string> kill,
        int? handleBudget = null, Func<HostUsage?>? measure = null)
    {
        _period = period;
        _memoryBudget = memoryBudget;
        _handleBudget = handleBudget;
        _measure = measure ?? (() => null);
        _sendPing = sendPing;
        _kill = kill;
        _timer = time.CreateTimer(static s => ((HeartbeatMonitor)s!).Tick(), this, period, period);
    }

    public void OnPong(long sequence, long workingSetBytes)
    {
        string? reason = null;
        lock (_gate)
        {
            if (sequence > _answered && sequence <= _sent)
            {
                _answered = sequence;
            }

            if (_endReason is null && _memoryBudget is { } budget && workingSetBytes > budget)
            {
                reason = _endReason = $"over its memory budget: working set {workingSetBytes / (1024 * 1024)} MiB > {budget / (1024 * 1024)} MiB";
            }
        }

        if (reason is not null)
        {
            _kill(reason);
            TakeCheck().TrySetResult(reason);
        }
    }

    /// <summary>Completes once the next periodic check (memory, handles, unanswered pings) is done,
    /// measured after the call: null if the host passed; else why it will not run on (the reason
    /// the watchdog killed it, at once if it already had; "the host is gone" once the monitor is
    /// disposed, the host having exited, at once if it already was).
    /// For a caller that must not judge a host before the watchdog has looked at it.</summary>
    public Task<string?> NextCheckAsync()
    {
        lock (_gate)
        {
            return _endReason is not null ? Task.FromResult<string?>(_endReason) : _nextCheck.Task;
        }
    }

    public void Dispose()
    {
        _timer.Dispose();
        string reason;
        lock (_gate)
        {
            // A check asked for from now on is answered at once, as for a killed host.
            reason = _endReason ??= "the host is gone";
        }

        TakeCheck().TrySetResult(reason);
    }

    /// <summary>The check waited for until now (its caller completes it); later callers wait for the next.</summary>
    private TaskCompletionSource<string?> TakeCheck()
    {
        lock (_gate)
        {
            var taken = _nextCheck;
            _nextCheck = NewCheck();
            return taken;
        }
    }

    private static TaskCompletionSource<string?> NewCheck() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private void Tick()
    {
        long ping;
        string? reason = null;

        // Whoever asked before now gets this check (measured after they asked); whoever asks from
        // now on, the next one.
        var check = TakeCheck();
        var usage = _measure();
        lock (_gate)
        {
            if (_endReason is not null)
            {
                check.TrySetResult(_endReason);
                return;
            }

            if (usage is { ResidentBytes: { } resident } && _memoryBudget is { } budget && resident > budget)
            {
                reason = $"over its memory budget: resident {resident / (1024 * 1024)} MiB > {budget / (1024 * 1024)} MiB";
            }
            else if (usage is { Handles: { } handles } && _handleBudget is { } handleBudget && handles > handleBudget)
            {
                reason = $"over its handle budget: {handles} open handles > {handleBudget}";
            }
            else if (_sent - _answered >= MissedBeforeKill)
            {
                reason = $"hung: {_sent - _answered} heartbeats unanswered (period {_period.TotalMilliseconds:F0} ms)";
            }

            ping = ++_sent;
            _endReason = reason;
        }

        if (reason is not null)
        {
            _kill(reason);
        }
        else
        {
            _sendPing(ping);
        }

        check.TrySetResult(reason);
    }
}

/// <summary>What the operating system says a host process uses; null where it cannot tell.</summary>
internal readonly record struct HostUsage(long? ResidentBytes, int? Handles)
{
    /// <summary>Reads /proc/&lt;pid&gt;/statm and counts /proc/&lt;pid&gt;/fd (Linux,
    /// <see cref="OpenDescriptors"/>); null elsewhere or once the process is gone.</summary>
    public static HostUsage? Of(int processId)
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        try
        {
            var statm = File.ReadAllText($"/proc/{processId}/statm").Split(' ');
            long? resident = long.TryParse(statm.ElementAtOrDefault(1), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var pages)
                ? pages * Environment.SystemPageSize
                : null;
            var handles = OpenDescriptors.Count(processId);
            return new HostUsage(resident, handles);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
