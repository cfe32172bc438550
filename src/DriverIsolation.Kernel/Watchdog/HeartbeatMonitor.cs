namespace DriverIsolation.Kernel;

/// <summary>
/// One host's heartbeat: every period a Ping goes out; a host with two Pings unanswered when the
/// next period comes is hung and is killed (MINIX turns a missed heartbeat into a kill, so hangs
/// and crashes share one recovery path). Each Pong also reports the host's working set, checked
/// against its memory budget. Time comes from the injected <see cref="TimeProvider"/>.
/// </summary>
internal sealed class HeartbeatMonitor : IDisposable
{
    public const int MissedBeforeKill = 2;

    private readonly Action<long> _sendPing;
    private readonly Action<string> _kill;
    private readonly long? _memoryBudget;
    private readonly TimeSpan _period;
    private readonly Lock _gate = new();
    private readonly ITimer _timer;
    private long _sent;
    private long _answered;
    private bool _killed;

    public HeartbeatMonitor(TimeProvider time, TimeSpan period, long? memoryBudget, Action<long> sendPing, Action<string> kill)
    {
        _period = period;
        _memoryBudget = memoryBudget;
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

            if (!_killed && _memoryBudget is { } budget && workingSetBytes > budget)
            {
                _killed = true;
                reason = $"over its memory budget: working set {workingSetBytes / (1024 * 1024)} MiB > {budget / (1024 * 1024)} MiB";
            }
        }

        if (reason is not null)
        {
            _kill(reason);
        }
    }

    public void Dispose() => _timer.Dispose();

    private void Tick()
    {
        long ping;
        string? reason = null;
        lock (_gate)
        {
            if (_killed)
            {
                return;
            }

            if (_sent - _answered >= MissedBeforeKill)
            {
                _killed = true;
                reason = $"hung: {_sent - _answered} heartbeats unanswered (period {_period.TotalMilliseconds:F0} ms)";
            }

            ping = ++_sent;
        }

        if (reason is not null)
        {
            _kill(reason);
            return;
        }

        _sendPing(ping);
    }
}
