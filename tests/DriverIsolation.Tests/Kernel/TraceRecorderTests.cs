using System.Text.Json;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// The Chrome / Perfetto trace: one Read of the RAM disk under the XOR filter, each in its own
/// process, shows as one slice on the kernel's track and one slice per layer on each host's track,
/// all carrying the IRP's id and nested in time; a killed host is an instant event on its track.
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
        var layers = events.Where(e => e.GetProperty("ph").GetString() == "X" && e.GetProperty("pid").GetInt32() != Environment.ProcessId
            && e.GetProperty("args").GetProperty("irp").GetInt64() == irp).ToList();

        // Down through the filter to the disk, and back up through the filter's completion routine.
        Assert.Equal([("XorFilter: Read", pids["XorFilter"]), ("RamDisk: Read", pids["RamDisk"]), ("XorFilter: Read", pids["XorFilter"])],
            layers.Select(l => (l.GetProperty("name").GetString(), l.GetProperty("pid").GetInt32())));
        Assert.Equal(["passed down", "completed with Success", "completed with Success"], layers.Select(l => l.GetProperty("args").GetProperty("ended").GetString()));
        var start = read.GetProperty("ts").GetDouble();
        var end = start + read.GetProperty("dur").GetDouble();
        Assert.All(layers, l => Assert.InRange(l.GetProperty("ts").GetDouble(), start, end));

        var exited = Assert.Single(events, e => e.GetProperty("ph").GetString() == "i" && e.GetProperty("name").GetString() == "HostExited RamDisk");
        Assert.Equal(pids["RamDisk"], exited.GetProperty("pid").GetInt32());
    }
}
