using System.Collections.Concurrent;
using System.Diagnostics;

namespace DriverIsolation.Cli.Demo;

/// <summary>Per-device request outcomes as the application saw them: status counts and round-trip
/// latencies (from the call to the completion), for percentiles.</summary>
internal sealed class LatencyRecorder
{
    private readonly ConcurrentDictionary<string, DeviceSamples> _devices = new(StringComparer.OrdinalIgnoreCase);

    public async Task<IoResult> TimeAsync(string device, Func<ValueTask<IoResult>> request)
    {
        var start = Stopwatch.GetTimestamp();
        var result = await request().ConfigureAwait(false);
        var elapsed = Stopwatch.GetElapsedTime(start);
        _devices.GetOrAdd(device, static _ => new DeviceSamples()).Add(result.Status, elapsed);
        return result;
    }

    public IReadOnlyDictionary<string, DeviceSamples> Devices => _devices;
}

internal sealed class DeviceSamples
{
    private readonly Lock _gate = new();
    private readonly List<double> _micros = [];
    private readonly Dictionary<NtStatus, int> _byStatus = [];

    public void Add(NtStatus status, TimeSpan elapsed)
    {
        lock (_gate)
        {
            _micros.Add(elapsed.TotalMicroseconds);
            _byStatus[status] = _byStatus.GetValueOrDefault(status) + 1;
        }
    }

    public int Count
    {
        get { lock (_gate) { return _micros.Count; } }
    }

    public IReadOnlyDictionary<NtStatus, int> ByStatus
    {
        get { lock (_gate) { return new Dictionary<NtStatus, int>(_byStatus); } }
    }

    /// <summary>Nearest-rank percentile, in microseconds.</summary>
    public double Percentile(double p)
    {
        lock (_gate)
        {
            if (_micros.Count == 0)
            {
                return double.NaN;
            }

            var sorted = _micros.Order().ToArray();
            var rank = (int)Math.Ceiling(p / 100 * sorted.Length);
            return sorted[Math.Clamp(rank - 1, 0, sorted.Length - 1)];
        }
    }
}
