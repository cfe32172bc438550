using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;

namespace DriverIsolation.Kernel;

/// <summary>
/// Records IRPs as a Chrome / Perfetto trace (the trace-event JSON format): one track per process,
/// the kernel and each host. On the kernel's track, every IRP is a slice from its entry to its
/// completion to the caller. On a host's track, each stay of the IRP in a layer of that host is a
/// slice timed by the host itself (it gets the IRP's trace context in the dispatch frame and
/// answers with a <see cref="Protocol.HostSpan"/>: from reading the request to completing it or
/// passing it down), with the driver's routine nested inside it. A stay that ends without the
/// host's word (the host died, the deadline passed) and stays in in-kernel drivers are timed by the
/// kernel. Every slice carries the W3C trace id and span ids, so the trace is one distributed trace.
/// Host exits, restarts, quarantines, watchdog kills, IOMMU faults, injected faults and bug checks
/// are instant events. Opt-in: a kernel records only while <see cref="Microkernel.Trace"/> is set.
/// </summary>
public sealed class TraceRecorder
{
    private readonly long _origin;
    private readonly string _label;
    private readonly ConcurrentQueue<Dictionary<string, object>> _events = new();
    private readonly ConcurrentDictionary<int, string> _processes = new();
    private readonly int _maxEvents;
    private int _count;

    /// <param name="maxEvents">Events kept at most (later ones are dropped and counted).</param>
    /// <param name="origin">Time zero of the trace (a Stopwatch timestamp; the machine's monotonic
    /// clock, the same in every process): traces recorded with one origin in several processes
    /// (the trials of a campaign) line up when merged. Default: now.</param>
    /// <param name="label">Put before every process name (e.g. "trial 12: ").</param>
    public TraceRecorder(int maxEvents = 1_000_000, long? origin = null, string label = "")
    {
        _maxEvents = maxEvents;
        _origin = origin ?? Stopwatch.GetTimestamp();
        _label = label;
        _processes[Environment.ProcessId] = $"{_label}kernel (PID {Environment.ProcessId})";
    }

    /// <summary>Events dropped because the trace was full.</summary>
    public int Dropped => Math.Max(0, Volatile.Read(ref _count) - _maxEvents);

    internal void LayerEntered(KernelIrp irp, DeviceLayer layer)
    {
        irp.TraceLayer = (Stopwatch.GetTimestamp(), layer.Host.ProcessId, layer.Driver.Name);
        _processes.TryAdd(layer.Host.ProcessId, $"{_label}{(layer.Host.ProcessId == Environment.ProcessId ? "kernel" : $"host {layer.Host.Name}")} (PID {layer.Host.ProcessId})");
    }

    /// <summary>Host spans dropped: not for an IRP the host held, or with impossible times.</summary>
    public int RejectedHostSpans => Volatile.Read(ref _rejected);

    private int _rejected;

    internal void RejectHostSpan() => Interlocked.Increment(ref _rejected);

    // A stay the host timed itself is already recorded: its span came before the completion or
    // pass-down that ends it, on the same connection, and took the stay away.
    internal void LayerLeft(KernelIrp irp, string how)
    {
        if (irp.TraceLayer is not { } layer)
        {
            return;
        }

        irp.TraceLayer = null;
        Add(Slice($"{layer.Driver}: {irp.MajorFunction}", layer.Pid, irp.Layers[^1].DeviceId, layer.Since, Stopwatch.GetTimestamp(),
            WithTrace(new Dictionary<string, object> { ["irp"] = irp.Id, ["device"] = irp.Device.Name, ["ended"] = how, ["timed_by"] = "kernel" }, irp.TraceParent, null)));
    }

    /// <summary>A host's own timing of one stay (see <see cref="Protocol.HostSpan"/>), checked
    /// against what the kernel knows: the host held the IRP, and every time lies between the IRP's
    /// entry into the kernel and now, in order.</summary>
    internal void HostSpan(KernelIrp irp, int pid, bool owner, Protocol.HostSpan span)
    {
        var now = Stopwatch.GetTimestamp();
        var routine = span.RoutineStart != 0 || span.RoutineEnd != 0;
        var valid = owner && span.Name.Length <= 200 && span.Outcome.Length <= 200 && span.SpanId.Length == 16
            && irp.StartedAt <= span.Received && span.Received <= span.Ended && span.Ended <= now
            && (!routine || (span.Received <= span.RoutineStart && span.RoutineStart <= span.RoutineEnd && span.RoutineEnd <= span.Ended));
        if (!valid)
        {
            Interlocked.Increment(ref _rejected);
            return;
        }

        if (irp.TraceLayer is { } layer && layer.Pid == pid)
        {
            irp.TraceLayer = null;
        }

        var args = WithTrace(new Dictionary<string, object> { ["irp"] = irp.Id, ["device"] = irp.Device.Name, ["ended"] = span.Outcome, ["timed_by"] = "host" },
            irp.TraceParent, span.SpanId);
        Add(Slice(span.Name, pid, span.DeviceId, span.Received, span.Ended, args));
        if (routine)
        {
            Add(Slice("driver code", pid, span.DeviceId, span.RoutineStart, span.RoutineEnd,
                new Dictionary<string, object> { ["irp"] = irp.Id, ["timed_by"] = "host" }));
        }
    }

    // trace_id and span_id from the IRP's W3C context (00-trace-span-01); a host's own span is a
    // child of the IRP's span.
    private static Dictionary<string, object> WithTrace(Dictionary<string, object> args, string? traceParent, string? hostSpanId)
    {
        if (traceParent is { Length: 55 })
        {
            args["trace_id"] = traceParent[3..35];
            if (hostSpanId is null)
            {
                args["span_id"] = traceParent[36..52];
            }
            else
            {
                args["span_id"] = hostSpanId;
                args["parent_span_id"] = traceParent[36..52];
            }
        }

        return args;
    }

    internal void IrpFinished(KernelIrp irp, NtStatus status)
    {
        LayerLeft(irp, $"the IRP ended with {status}");
        Add(Slice($"{irp.MajorFunction} {irp.Device.Name}", Environment.ProcessId, irp.Layers[^1].DeviceId, irp.StartedAt, Stopwatch.GetTimestamp(),
            WithTrace(new Dictionary<string, object> { ["irp"] = irp.Id, ["status"] = status.ToString() }, irp.TraceParent, null)));
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
        var events = _processes.OrderBy(p => p.Key == Environment.ProcessId ? 0 : 1).Select(p => new Dictionary<string, object>
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

    /// <summary>Merges traces (of several trial processes) into one file: their events side by
    /// side, each process once. Returns how many traces were merged; files that are missing or
    /// no trace are skipped.</summary>
    public static async Task<int> MergeAsync(IEnumerable<string> traces, string path, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(traces);
        var events = new List<JsonElement>();
        var named = new HashSet<int>();
        var merged = 0;
        foreach (var trace in traces)
        {
            if (!File.Exists(trace))
            {
                continue;
            }

            JsonDocument document;
            try
            {
                document = JsonDocument.Parse(await File.ReadAllBytesAsync(trace, cancellationToken).ConfigureAwait(false));
            }
            catch (JsonException)
            {
                continue;
            }

            using (document)
            {
                if (!document.RootElement.TryGetProperty("traceEvents", out var list) || list.ValueKind != JsonValueKind.Array)
                {
                    continue;
                }

                merged++;
                foreach (var e in list.EnumerateArray())
                {
                    if (e.GetProperty("ph").GetString() == "M" && !named.Add(e.GetProperty("pid").GetInt32()))
                    {
                        continue;
                    }

                    events.Add(e.Clone());
                }
            }
        }

        await using var stream = File.Create(path);
        await JsonSerializer.SerializeAsync(stream, new Dictionary<string, object> { ["traceEvents"] = events, ["displayTimeUnit"] = "ms" },
            cancellationToken: cancellationToken).ConfigureAwait(false);
        return merged;
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
