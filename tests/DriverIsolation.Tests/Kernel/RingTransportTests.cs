using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Tests;

/// <summary>
/// The shared-memory ring transport delivers exactly what the named pipe delivers: the same
/// seeded workload on the null device, a RAM disk under a filter and the DMA-driven block device
/// gives the same statuses, lengths and bytes over either (and over the ring with no thread-pool
/// hop: routines inline in the hosts, callers' continuations on the kernel's readers); a host killed under the ring is
/// restarted on a fresh ring and the data survives.
/// </summary>
[Collection("processes")]
public sealed class RingTransportTests
{
    [Theory]
    [InlineData(IsolationModel.Process)]
    [InlineData(IsolationModel.SharedHost)]
    public async Task SameWorkload_OverThePipeAndOverTheRing_SameResults(IsolationModel isolation)
    {
        var pipe = await RunAsync(Transport.Pipe, isolation);
        var ring = await RunAsync(Transport.Ring, isolation);

        // And with no thread-pool hop on the path: routines inline on the hosts' readers, the
        // callers' continuations on the kernel's.
        var runToCompletion = await RunAsync(Transport.Ring, isolation, runToCompletion: true);

        Assert.Equal(pipe.Count, ring.Count);
        Assert.True(pipe.Count > 600, $"{pipe.Count} results");
        Assert.Equal(pipe, ring);
        Assert.Equal(pipe, runToCompletion);
    }

    [Fact]
    public async Task HostKilledUnderTheRing_RestartsOnAFreshRing_DataIntact()
    {
        // The block device keeps its media in the device model (the kernel's side): what was
        // written before the kill must read back after it.
        await using var kernel = new Microkernel(new KernelOptions { Transport = Transport.Ring });
        await kernel.StartAsync([TestManifests.Sample("VBlock") with { Recovery = new RecoveryPolicy { InFlight = InFlightPolicy.Retry } }], IsolationModel.Process).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var blocks = Enumerable.Range(0, 64).Select(b => Enumerable.Repeat((byte)(b + 1), 4096).ToArray()).ToList();

        var before = await Task.WhenAll(blocks.Take(32).Select((data, b) => disk.WriteAsync(data, b * 4096L).AsTask())).Bounded();
        var during = blocks.Skip(32).Select((data, b) => disk.WriteAsync(data, (b + 32) * 4096L).AsTask()).ToList();
        kernel.KillDriverHost("VBlock");
        var written = before.Concat(await Task.WhenAll(during).Bounded());
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.All(written, r => Assert.Equal(new IoResult(NtStatus.Success, 4096), r));
        for (var b = 0; b < blocks.Count; b++)
        {
            var back = new byte[4096];
            Assert.Equal(new IoResult(NtStatus.Success, 4096), await disk.ReadAsync(back, b * 4096L).Bounded());
            Assert.Equal(blocks[b], back);
        }

        Assert.Equal((1, Transport.Ring), (kernel.GetDrivers().Single().Restarts, kernel.GetDrivers().Single().Transport));
        Assert.Equal(0, kernel.OutstandingIrps);
        Assert.Empty(Directory.GetFiles("/dev/shm", $"drviso-ring-{Environment.ProcessId}-*"));
    }

    /// <summary>Every result of a seeded mix of reads and writes (many in flight) on three
    /// devices, in a fixed order: device, index, status, information, the bytes read.</summary>
    private static async Task<List<string>> RunAsync(Transport transport, IsolationModel isolation, bool runToCompletion = false)
    {
        await using var kernel = new Microkernel(new KernelOptions
        {
            Transport = transport,
            IommuMode = IommuMode.Strict,
            HostDispatch = runToCompletion ? DriverHost.HostDispatch.Inline : DriverHost.HostDispatch.Pool,
            InlineCompletions = runToCompletion,
        });
        await kernel.StartAsync([TestManifests.Sample("Null"), TestManifests.Sample("RamDisk"), TestManifests.Sample("XorFilter"), TestManifests.Sample("VBlock")], isolation).Bounded();
        var results = new List<string>();
        foreach (var path in new[] { @"\??\NUL", @"\??\RamDisk0", @"\??\VBlock0" })
        {
            await using var device = await kernel.OpenAsync(path).Bounded();
            var random = new Random(11);
            for (var round = 0; round < 25; round++)
            {
                // Eight requests in flight at a time: writes of seeded data, then reads of the same blocks.
                var blocks = Enumerable.Range(0, 8).Select(_ => random.Next(0, 256)).Distinct().ToList();
                var data = blocks.Select(_ => { var d = new byte[4096]; random.NextBytes(d); return d; }).ToList();
                var written = await Task.WhenAll(blocks.Select((b, i) => device.WriteAsync(data[i], b * 4096L).AsTask())).Bounded();
                var buffers = blocks.Select(_ => new byte[4096]).ToList();
                var read = await Task.WhenAll(blocks.Select((b, i) => device.ReadAsync(buffers[i], b * 4096L).AsTask())).Bounded();
                results.AddRange(written.Select((r, i) => $"{path} w{round}.{i} {r.Status} {r.Information}"));
                results.AddRange(read.Select((r, i) => $"{path} r{round}.{i} {r.Status} {r.Information} {Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(buffers[i]))}"));
            }
        }

        Assert.Equal(0, kernel.OutstandingIrps);
        Assert.All(kernel.GetDrivers(), d => Assert.Equal(transport, d.Transport));

        // Run to completion did run the callers' code on the kernel's readers (the devices' top
        // drivers deliver the completions), and only then.
        foreach (var top in new[] { "Null", "XorFilter", "VBlock" })
        {
            Assert.True(runToCompletion == kernel.CompletedInline(top) > 0, $"{top}: {kernel.CompletedInline(top)} continuations on its reader");
        }

        return results;
    }
}
