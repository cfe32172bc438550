using System.Collections.Concurrent;

namespace DriverIsolation.Kernel;

/// <summary>Completed requests of one device, by final status. Success, by far the most common,
/// is one interlocked counter; the others share a dictionary.</summary>
internal sealed class DeviceStatistics
{
    private readonly ConcurrentDictionary<NtStatus, long> _byStatus = new();
    private long _succeeded;

    public void Record(NtStatus status)
    {
        if (status == NtStatus.Success)
        {
            Interlocked.Increment(ref _succeeded);
            return;
        }

        _byStatus.AddOrUpdate(status, 1, static (_, n) => n + 1);
    }

    public IReadOnlyDictionary<NtStatus, long> Snapshot()
    {
        var snapshot = new Dictionary<NtStatus, long>(_byStatus);
        if (Interlocked.Read(ref _succeeded) is > 0 and var succeeded)
        {
            snapshot[NtStatus.Success] = succeeded;
        }

        return snapshot;
    }
}
