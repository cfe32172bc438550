namespace DriverIsolation.Kernel;

/// <summary>A token bucket: <c>perSecond</c> tokens a second, at most <c>burst</c> saved up. Used to
/// bound what a host can make the kernel do (log lines, refused messages) per unit of time.</summary>
internal sealed class RateLimit(TimeProvider time, int perSecond, int burst)
{
    private readonly Lock _gate = new();
    private double _tokens = burst;
    private long _last = time.GetTimestamp();

    /// <summary>Takes one token; false if the bucket is empty (the limit is exceeded).</summary>
    public bool TryTake()
    {
        lock (_gate)
        {
            var now = time.GetTimestamp();
            _tokens = Math.Min(burst, _tokens + (time.GetElapsedTime(_last, now).TotalSeconds * perSecond));
            _last = now;
            if (_tokens < 1)
            {
                return false;
            }

            _tokens--;
            return true;
        }
    }
}
