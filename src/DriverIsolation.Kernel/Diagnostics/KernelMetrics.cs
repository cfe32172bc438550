using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace DriverIsolation.Kernel;

/// <summary>
/// The kernel's metrics (System.Diagnostics.Metrics, meter <see cref="MeterName"/>): what
/// <c>dotnet-counters monitor --counters DriverIsolation.Kernel -p &lt;pid&gt;</c> shows, and what an
/// OpenTelemetry metrics pipeline exports. One meter per kernel, disposed with it.
/// </summary>
public sealed class KernelMetrics : IDisposable
{
    public const string MeterName = "DriverIsolation.Kernel";

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<MajorFunction, string> Names = new();
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<NtStatus, string> StatusNames = new();
    private readonly Counter<long> _completed;
    private readonly Histogram<double> _duration;
    private readonly Counter<long> _events;

    private readonly Func<int> _inFlight;

    internal KernelMetrics(Func<int> inFlight, Func<(long Hits, long Misses)?> iotlb)
    {
        _inFlight = inFlight;
        Meter = new Meter(MeterName, "1.0");
        _completed = Meter.CreateCounter<long>("drviso.irp.completed", "{irp}", "IRPs completed to their callers, by device, major function and final status");
        _duration = Meter.CreateHistogram<double>("drviso.irp.duration", "ms", "Time from an IRP's entry into the kernel to its completion to the caller, by device and major function");
        _events = Meter.CreateCounter<long>("drviso.kernel.events", "{event}",
            "What the kernel observed, by kind (HostExited, DriverRestarted, DriverQuarantined, IommuFault, WatchdogKill, ProtocolViolation, IrpTimedOut, BugCheck, ...) and driver");
        Meter.CreateObservableUpDownCounter("drviso.irp.in_flight", inFlight, "{irp}", "IRPs in the kernel that have not completed yet");
        Meter.CreateObservableGauge("drviso.iommu.iotlb_hit_ratio", () =>
            iotlb() is { } counts && counts.Hits + counts.Misses > 0
                ? [new Measurement<double>(counts.Hits / (double)(counts.Hits + counts.Misses))]
                : Array.Empty<Measurement<double>>(), null, "IOTLB hits over all IOMMU translations so far");
    }

    /// <summary>IRPs in the kernel now (what drviso.irp.in_flight reports).</summary>
    public int InFlight => _inFlight();

    /// <summary>This kernel's meter (a listener picks its instruments by it).</summary>
    public Meter Meter { get; }

    /// <summary>Counts and times one completion; costs nothing (no allocation) while nobody listens.</summary>
    internal void IrpCompleted(string device, MajorFunction function, NtStatus status, long startedAt)
    {
        if (!_completed.Enabled && !_duration.Enabled)
        {
            return;
        }

        var deviceTag = new KeyValuePair<string, object?>("device", device);
        var functionTag = new KeyValuePair<string, object?>("function", Names.GetOrAdd(function, static f => f.ToString()));
        _completed.Add(1, deviceTag, functionTag, new KeyValuePair<string, object?>("status", StatusNames.GetOrAdd(status, static s => s.ToString())));
        if (_duration.Enabled)
        {
            _duration.Record(Stopwatch.GetElapsedTime(startedAt).TotalMilliseconds, deviceTag, functionTag);
        }
    }

    internal void EventRaised(KernelEvent e) =>
        _events.Add(1, new KeyValuePair<string, object?>("kind", e.Kind.ToString()), new KeyValuePair<string, object?>("driver", e.Driver ?? ""));

    public void Dispose() => Meter.Dispose();
}
