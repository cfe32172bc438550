using System.Collections.Concurrent;

namespace DriverIsolation.Kernel;

/// <summary>Completed requests of one device, by final status.</summary>
internal sealed class DeviceStatistics
{
    private readonly ConcurrentDictionary<NtStatus, long> _byStatus = new();

    public void Record(NtStatus status) => _byStatus.AddOrUpdate(status, 1, static (_, n) => n + 1);

    public IReadOnlyDictionary<NtStatus, long> Snapshot() => new Dictionary<NtStatus, long>(_byStatus);
}
