namespace DriverIsolation.Kernel;

/// <summary>Counts a driver's failures in a sliding window: more than the policy's maximum within
/// the window means quarantine. Failures older than the window are forgotten, so a driver that
/// has been quiet long enough starts again with a clean record.</summary>
internal sealed class FailureWindow(int maxFailures, TimeSpan window)
{
    private readonly Queue<DateTimeOffset> _failures = new();

    public int Count => _failures.Count;

    /// <summary>Records a failure at <paramref name="now"/>; true if the driver must be quarantined.</summary>
    public bool RecordAndCheck(DateTimeOffset now)
    {
        _failures.Enqueue(now);
        while (_failures.TryPeek(out var oldest) && now - oldest >= window)
        {
            _failures.Dequeue();
        }

        return _failures.Count > maxFailures;
    }

    public void Reset() => _failures.Clear();
}
