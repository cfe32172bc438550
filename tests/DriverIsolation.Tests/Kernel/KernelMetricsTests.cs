using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// The kernel's metrics, read the way dotnet-counters and OpenTelemetry read them (a
/// MeterListener on this kernel's meter): every IRP completed counted by device, function and
/// status and timed, a host killed and restarted counted as events, IRPs in flight observed.
/// </summary>
[Collection("processes")]
public sealed class KernelMetricsTests
{
    [Fact]
    public async Task IrpsRestartsAndInFlight_AreMeasured_OnTheKernelsMeter()
    {
        await using var kernel = new Microkernel();
        var counts = new ConcurrentDictionary<string, long>();
        var durations = new ConcurrentBag<double>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter == kernel.Metrics.Meter)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            counts.AddOrUpdate($"{instrument.Name}{Tags(tags)}", value, (_, sum) => sum + value));
        listener.SetMeasurementEventCallback<int>((instrument, value, tags, _) => counts[$"{instrument.Name}{Tags(tags)}"] = value);
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
        {
            if (instrument.Name == "drviso.irp.duration" && Tags(tags) == "[device=\\Device\\Null,function=Read]")
            {
                durations.Add(value);
            }
        });
        listener.Start();

        await kernel.StartAsync([TestManifests.Sample("Null") with { Recovery = new RecoveryPolicy { InFlight = InFlightPolicy.Retry } }], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        for (var i = 0; i < 10; i++)
        {
            Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[64]).Bounded()).Status);
        }

        kernel.KillDriverHost("Null");
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();
        Assert.Equal(NtStatus.Success, (await nul.WriteAsync(new byte[64]).Bounded()).Status);
        listener.RecordObservableInstruments();

        Assert.Equal(10, counts.GetValueOrDefault("drviso.irp.completed[device=\\Device\\Null,function=Read,status=Success]"));
        Assert.Equal(1, counts.GetValueOrDefault("drviso.irp.completed[device=\\Device\\Null,function=Write,status=Success]"));
        // The open, and its re-open on the restarted instance.
        Assert.Equal(2, counts.GetValueOrDefault("drviso.irp.completed[device=\\Device\\Null,function=Create,status=Success]"));
        Assert.Equal(10, durations.Count);
        Assert.All(durations, d => Assert.True(d > 0));
        Assert.Equal(1, counts.GetValueOrDefault("drviso.kernel.events[driver=Null,kind=DriverRestarted]"));
        Assert.Equal(1, counts.GetValueOrDefault("drviso.kernel.events[driver=Null,kind=HostExited]"));
        Assert.Equal(0, counts.GetValueOrDefault("drviso.irp.in_flight"));
        Assert.True(counts.ContainsKey("drviso.irp.in_flight"));
    }

    private static string Tags(ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        if (tags.Length == 0)
        {
            return "";
        }

        var list = new List<string>();
        foreach (var tag in tags)
        {
            list.Add($"{tag.Key}={tag.Value}");
        }

        return $"[{string.Join(',', list.Order(StringComparer.Ordinal))}]";
    }
}
