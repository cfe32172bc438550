using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;

namespace DriverIsolation.Kernel;

/// <summary>
/// Records IRPs as a Chrome / Perfetto trace (the trace-event JSON format): one track per process,
/// the kernel and each host. On the kernel's track, every IRP is a slice from its entry to its
/// completion to the caller; on a host's track, each stay of the IRP in a layer of that host is a
/// slice, from the kernel sending it there to the host completing it or passing it down (timed by
/// the kernel: what the kernel saw of the host). Host exits, restarts, quarantines, watchdog kills,
/// IOMMU faults, injected faults and bug checks are instant events. Opt-in: a kernel records only
/// while <see cref="Microkernel.Trace"/> is set.
/// </summary>
public sealed class TraceRecorder
{
    private readonly long _origin = Stopwatch.GetTimestamp();
    private readonly ConcurrentQueue<Dictionary<string, object>> _events = new();
    private readonly ConcurrentDictionary<int, string> _processes = new();
    private readonly int _maxEvents;
    private int _count;

    /// <param name="maxEvents">Events kept at most (later ones are dropped and counted).</param>
    public TraceRecorder(int maxEvents = 1_000_000)
    {
        _maxEvents = maxEvents;
        _processes[Environment.ProcessId] = $"kernel (PID {Environment.ProcessId})";
    }

    /// <summary>Events dropped because the trace was full.</summary>
    public int Dropped => Math.Max(0, Volatile.Read(ref _count) - _maxEvents);

    internal void LayerEntered(KernelIrp irp, DeviceLayer layer)
    {
        irp.TraceLayer = (Stopwatch.GetTimestamp(), layer.Host.ProcessId, layer.Driver.Name);
        _processes.TryAdd(layer.Host.ProcessId, $"{(layer.Host.ProcessId == Environment.ProcessId ? "kernel" : $"host {layer.Host.Name}")} (PID {layer.Host.ProcessId})");
    }

    internal void LayerLeft(KernelIrp irp, string how)
    {
        if (irp.TraceLayer is not { } layer)
        {
            return;
        }

        irp.TraceLayer = null;
        Add(Slice($"{layer.Driver}: {irp.MajorFunction}", layer.Pid, irp.Layers[^1].DeviceId, layer.Since, Stopwatch.GetTimestamp(),
            new Dictionary<string, object> { ["irp"] = irp.Id, ["device"] = irp.Device.Name, ["ended"] = how }));
    }

    internal void IrpFinished(KernelIrp irp, NtStatus status)
    {
        LayerLeft(irp, $"the IRP ended with {status}");
        Add(Slice($"{irp.MajorFunction} {irp.Device.Name}", Environment.ProcessId, irp.Layers[^1].DeviceId, irp.StartedAt, Stopwatch.GetTimestamp(),
            new Dictionary<string, object> { ["irp"] = irp.Id, ["status"] = status.ToString() }));
    }

    internal void EventRaised(KernelEvent e, int? pid)
    {
        if (e.Kind is not (KernelEventKind.HostExited or KernelEventKind.DriverRestarted or KernelEventKind.DriverQuarantined or KernelEventKind.WatchdogKill
            or KernelEventKind.IommuFault or KernelEventKind.FaultInjected or KernelEventKind.BugCheck or KernelEventKind.ProtocolViolation
            or KernelEventKind.IrpTimedOut or KernelEventKind.KernelMemoryCorrupted))
        {
            return;
        }

        Add(new Dictionary<string, object>
        {
            ["name"] = $"{e.Kind}{(e.Driver is null ? "" : $" {e.Driver}")}",
            ["ph"] = "i",
            ["s"] = "p",
            ["ts"] = Micros(Stopwatch.GetTimestamp()),
            ["pid"] = pid ?? Environment.ProcessId,
            ["tid"] = 0,
            ["args"] = new Dictionary<string, object> { ["detail"] = e.Detail },
        });
    }

    /// <summary>Writes the trace (loads in ui.perfetto.dev and chrome://tracing).</summary>
    public async Task WriteAsync(string path, CancellationToken cancellationToken = default)
    {
        var events = _processes.Select(p => new Dictionary<string, object>
        {
            ["name"] = "process_name",
            ["ph"] = "M",
            ["pid"] = p.Key,
            ["tid"] = 0,
            ["args"] = new Dictionary<string, object> { ["name"] = p.Value },
        }).Concat(_events).ToList();
        await using var stream = File.Create(path);
        await JsonSerializer.SerializeAsync(stream, new Dictionary<string, object> { ["traceEvents"] = events, ["displayTimeUnit"] = "ms" },
            cancellationToken: cancellationToken).ConfigureAwait(false);
    }

    private Dictionary<string, object> Slice(string name, int pid, int tid, long start, long end, Dictionary<string, object> args) => new()
    {
        ["name"] = name,
        ["ph"] = "X",
        ["ts"] = Micros(start),
        ["dur"] = Math.Max(0, Micros(end) - Micros(start)),
        ["pid"] = pid,
        ["tid"] = tid,
        ["args"] = args,
    };

    private void Add(Dictionary<string, object> e)
    {
        if (Interlocked.Increment(ref _count) <= _maxEvents)
        {
            _events.Enqueue(e);
        }
    }

    private double Micros(long timestamp) => Math.Round((timestamp - _origin) * 1_000_000.0 / Stopwatch.Frequency, 3);
}
