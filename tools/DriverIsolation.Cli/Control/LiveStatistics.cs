using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using DriverIsolation.Kernel;

namespace DriverIsolation.Cli.Control;

/// <summary>
/// What <c>drviso top</c> shows, gathered in the serving kernel from its own metrics (the same
/// instruments <c>dotnet-counters</c> reads): IRPs completed and failed per device, their
/// latencies in buckets, and kernel events per kind and driver. Everything is a running total;
/// the viewer turns two snapshots into rates and percentiles for the interval between them.
/// </summary>
internal sealed class LiveStatistics : IDisposable
{
    /// <summary>Upper bounds of the latency buckets, in microseconds: 1 us, then 1.25 times the
    /// one before (a percentile read from them is within 25 %); the last bucket has no bound.</summary>
    public static readonly double[] BucketBoundsMicros = [.. Enumerable.Range(0, 96).Select(i => Math.Pow(1.25, i))];

    private readonly MeterListener _listener = new();
    private readonly ConcurrentDictionary<string, DeviceCounters> _devices = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<(string Kind, string Driver), StrongBox> _events = new();

    public LiveStatistics(Microkernel kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        var meter = kernel.Metrics.Meter;
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter == meter && instrument.Name is "drviso.irp.completed" or "drviso.irp.duration" or "drviso.kernel.events")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>(OnCount);
        _listener.SetMeasurementEventCallback<double>(OnDuration);
        _listener.Start();
    }

    public IReadOnlyList<ControlDevice> Devices(Microkernel kernel) =>
        [.. kernel.GetDevices().Select(d =>
        {
            var counters = _devices.GetOrAdd(d.Name, _ => new DeviceCounters());
            return new ControlDevice(d.Name, [.. d.Stack.Select(l => l.Driver)], Interlocked.Read(ref counters.Completed), Interlocked.Read(ref counters.Failed),
                [.. counters.Buckets.Select(b => Interlocked.Read(ref b.Value))]);
        })];

    public IReadOnlyList<ControlEventCount> Events() =>
        [.. _events.Select(e => new ControlEventCount(e.Key.Kind, e.Key.Driver, Interlocked.Read(ref e.Value.Value)))];

    public void Dispose() => _listener.Dispose();

    private void OnCount(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        if (instrument.Name == "drviso.kernel.events")
        {
            var key = (Tag(tags, "kind"), Tag(tags, "driver"));
            Interlocked.Add(ref _events.GetOrAdd(key, _ => new StrongBox()).Value, value);
            return;
        }

        var counters = _devices.GetOrAdd(Tag(tags, "device"), _ => new DeviceCounters());
        Interlocked.Add(ref counters.Completed, value);
        if (Tag(tags, "status") != nameof(NtStatus.Success))
        {
            Interlocked.Add(ref counters.Failed, value);
        }
    }

    private void OnDuration(Instrument instrument, double milliseconds, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        var counters = _devices.GetOrAdd(Tag(tags, "device"), _ => new DeviceCounters());
        var micros = milliseconds * 1000;
        var index = Array.BinarySearch(BucketBoundsMicros, micros);
        index = index >= 0 ? index : Math.Min(~index, BucketBoundsMicros.Length - 1);
        Interlocked.Increment(ref counters.Buckets[index].Value);
    }

    private static string Tag(ReadOnlySpan<KeyValuePair<string, object?>> tags, string name)
    {
        foreach (var tag in tags)
        {
            if (tag.Key == name)
            {
                return tag.Value as string ?? "";
            }
        }

        return "";
    }

    /// <summary>A counter that lives in a dictionary and is updated in place.</summary>
    private sealed class StrongBox
    {
        public long Value;
    }

    private sealed class DeviceCounters
    {
        public long Completed;
        public long Failed;
        public readonly StrongBox[] Buckets = [.. BucketBoundsMicros.Select(_ => new StrongBox())];
    }
}
