using System.Text.Json;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// The Chrome / Perfetto trace: one Read of the RAM disk under the XOR filter, each in its own
/// process, shows as one slice on the kernel's track and one slice per layer stay on each host's
/// track, timed by that host from the trace context in the dispatch frame, all in one W3C trace and
/// nested in time; a killed host is an instant event on its track.
/// </summary>
[Collection("processes")]
public sealed class TraceRecorderTests : IDisposable
{
    private readonly string _file = Path.Combine(Path.GetTempPath(), $"drviso-trace-{Guid.NewGuid():N}.json");

    public void Dispose() => File.Delete(_file);

    [Fact]
    public async Task OneIrp_CrossesThreeProcesses_OnTheirTracks_AndAKillIsAnInstant()
    {
        await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 0 });
        var trace = new TraceRecorder();
        kernel.Trace = trace;
        await kernel.StartAsync([TestManifests.Sample("RamDisk"), TestManifests.Sample("XorFilter")], IsolationModel.Process).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\RamDisk0").Bounded();
        Assert.Equal(NtStatus.Success, (await disk.ReadAsync(new byte[512], 0).Bounded()).Status);
        var pids = kernel.GetDrivers().ToDictionary(d => d.Name, d => d.ProcessId);
        kernel.KillDriverHost("RamDisk");
        await kernel.Events.WaitForAsync(KernelEventKind.HostExited).Bounded();
        kernel.Trace = null;
        await trace.WriteAsync(_file);

        using var json = JsonDocument.Parse(await File.ReadAllTextAsync(_file));
        var events = json.RootElement.GetProperty("traceEvents").EnumerateArray().ToList();
        var names = events.Where(e => e.GetProperty("ph").GetString() == "M")
            .ToDictionary(e => e.GetProperty("pid").GetInt32(), e => e.GetProperty("args").GetProperty("name").GetString());
        Assert.Equal($"kernel (PID {Environment.ProcessId})", names[Environment.ProcessId]);
        Assert.Equal($"host RamDisk (PID {pids["RamDisk"]})", names[pids["RamDisk"]]);
        Assert.Equal($"host XorFilter (PID {pids["XorFilter"]})", names[pids["XorFilter"]]);

        var read = Assert.Single(events, e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("name").GetString() == @"Read \Device\RamDisk0");
        Assert.Equal(Environment.ProcessId, read.GetProperty("pid").GetInt32());
        var irp = read.GetProperty("args").GetProperty("irp").GetInt64();
        Assert.Equal("Success", read.GetProperty("args").GetProperty("status").GetString());
        var traceId = read.GetProperty("args").GetProperty("trace_id").GetString();
        var spanId = read.GetProperty("args").GetProperty("span_id").GetString();
        Assert.Matches("^[0-9a-f]{32}$", traceId);
        var onHosts = events.Where(e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("pid").GetInt32() != Environment.ProcessId
            && e.GetProperty("args").GetProperty("irp").GetInt64() == irp).ToList();
        var layers = onHosts.Where(l => l.GetProperty("name").GetString() != "driver code").ToList();

        // Down through the filter to the disk, and back up through the filter's completion routine,
        // each stay timed by its host, a child span of the IRP's span in the same trace.
        Assert.Equal([("XorFilter: Read", pids["XorFilter"]), ("RamDisk: Read", pids["RamDisk"]), ("XorFilter: completion routine", pids["XorFilter"])],
            layers.Select(l => (l.GetProperty("name").GetString(), l.GetProperty("pid").GetInt32())));
        Assert.Equal(["passed down", "completed with Success", "completed with Success"], layers.Select(l => l.GetProperty("args").GetProperty("ended").GetString()));
        Assert.All(layers, l =>
        {
            var args = l.GetProperty("args");
            Assert.Equal("host", args.GetProperty("timed_by").GetString());
            Assert.Equal(traceId, args.GetProperty("trace_id").GetString());
            Assert.Equal(spanId, args.GetProperty("parent_span_id").GetString());
            Assert.Matches("^[0-9a-f]{16}$", args.GetProperty("span_id").GetString());
        });
        Assert.Equal(3, layers.Select(l => l.GetProperty("args").GetProperty("span_id").GetString()).Distinct().Count());

        // The hosts' clocks are the kernel's: every stay lies inside the kernel's slice, each
        // starts after the one before it ended, and each holds its driver's routine.
        static (double Start, double End) Span(JsonElement e) => (e.GetProperty("ts").GetDouble(), e.GetProperty("ts").GetDouble() + e.GetProperty("dur").GetDouble());
        var (start, end) = Span(read);
        var stays = layers.Select(Span).ToList();
        Assert.All(stays, s => Assert.True(start <= s.Start && s.End <= end, $"{s} outside the IRP's {(start, end)}"));
        Assert.True(stays[0].End <= stays[1].Start && stays[1].End <= stays[2].Start, string.Join(", ", stays));
        var routines = onHosts.Where(l => l.GetProperty("name").GetString() == "driver code").ToList();
        Assert.Equal(3, routines.Count);
        Assert.All(routines, r => Assert.Contains(stays, s => s.Start <= Span(r).Start && Span(r).End <= s.End));

        var exited = Assert.Single(events, e => e.GetProperty("ph").GetString() == "i" && e.GetProperty("name").GetString() == "HostExited RamDisk");
        Assert.Equal(pids["RamDisk"], exited.GetProperty("pid").GetInt32());
    }
}
