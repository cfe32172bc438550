namespace DriverIsolation.Kernel;

/// <summary>The kernel's event history (bounded) and a way to wait for an event without polling.</summary>
public sealed class KernelEventLog
{
    private const int Capacity = 10_000;
    private readonly Lock _gate = new();
    private readonly Queue<KernelEvent> _events = new();
    private readonly List<(Func<KernelEvent, bool> Match, TaskCompletionSource<KernelEvent> Waiter)> _waiters = [];
    private readonly TimeProvider _time;

    public KernelEventLog(TimeProvider time) => _time = time;

    /// <summary>Raised for every event, on the thread that observed it.</summary>
    public event Action<KernelEvent>? Raised;

    public IReadOnlyList<KernelEvent> Snapshot()
    {
        lock (_gate)
        {
            return [.. _events];
        }
    }

    public int Count(KernelEventKind kind)
    {
        lock (_gate)
        {
            return _events.Count(e => e.Kind == kind);
        }
    }

    /// <summary>Completes with the first event (already seen or still to come) that matches.</summary>
    public Task<KernelEvent> WaitForAsync(Func<KernelEvent, bool> match, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(match);
        lock (_gate)
        {
            var seen = _events.FirstOrDefault(match);
            if (seen is not null)
            {
                return Task.FromResult(seen);
            }

            var waiter = new TaskCompletionSource<KernelEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add((match, waiter));
            cancellationToken.Register(() => waiter.TrySetCanceled(cancellationToken));
            return waiter.Task;
        }
    }

    public Task<KernelEvent> WaitForAsync(KernelEventKind kind, CancellationToken cancellationToken = default) =>
        WaitForAsync(e => e.Kind == kind, cancellationToken);

    /// <summary>Completes with the <paramref name="count"/>-th event (seen or to come) that matches.</summary>
    public Task<KernelEvent> WaitForCountAsync(Func<KernelEvent, bool> match, int count, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(match);
        // The predicate runs under the log's lock, for past and future events alike, so the
        // counter sees every matching event exactly once and in order.
        var seen = 0;
        return WaitForAsync(e => match(e) && ++seen == count, cancellationToken);
    }

    internal KernelEvent Add(KernelEventKind kind, string? driver, long? irpId, string detail)
    {
        var e = new KernelEvent(_time.GetUtcNow(), kind, driver, irpId, detail);
        List<TaskCompletionSource<KernelEvent>>? matched = null;
        lock (_gate)
        {
            _events.Enqueue(e);
            if (_events.Count > Capacity)
            {
                _events.Dequeue();
            }

            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (_waiters[i].Match(e))
                {
                    (matched ??= []).Add(_waiters[i].Waiter);
                    _waiters.RemoveAt(i);
                }
            }
        }

        // Subscribers (the trace, the metrics) see the event before anyone waiting for it wakes:
        // a waiter that then reads what they recorded finds it there.
        try
        {
            Raised?.Invoke(e);
        }
        finally
        {
            matched?.ForEach(w => w.TrySetResult(e));
        }

        return e;
    }
}
