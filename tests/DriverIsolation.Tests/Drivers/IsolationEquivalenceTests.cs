using System.Buffers.Binary;
using System.Security.Cryptography;
using DriverIsolation.Disk;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>
/// One scripted session against the sample drivers, run in each isolation model on a fresh
/// kernel: the transcripts (every request's status, count and a hash of the data) must be
/// identical. Isolation changes where drivers run, never what an application sees.
/// </summary>
[Collection("processes")]
public sealed class IsolationEquivalenceTests
{
    [Fact]
    public async Task ScriptedSession_InEveryIsolationModel_GivesTheSameTranscript()
    {
        var inKernel = await TranscriptAsync(IsolationModel.InKernel);
        var shared = await TranscriptAsync(IsolationModel.SharedHost);
        var process = await TranscriptAsync(IsolationModel.Process);

        Assert.Equal(38, inKernel.Count);
        Assert.Equal(inKernel, shared);
        Assert.Equal(inKernel, process);
    }

    private static async Task<List<string>> TranscriptAsync(IsolationModel isolation)
    {
        var log = new List<string>();
        await using var kernel = new Microkernel();
        await kernel.StartAsync(TestManifests.Samples(), isolation).Bounded();

        await using (var nul = await kernel.OpenAsync(@"\??\NUL").Bounded())
        {
            var buffer = new byte[700];
            log.Add(Line("null read", await nul.ReadAsync(buffer).Bounded(), buffer));
            log.Add(Line("null write", await nul.WriteAsync(new byte[33]).Bounded()));
            log.Add(Line("null flush", await nul.FlushAsync().Bounded()));
            log.Add(Line("null ioctl", await nul.DeviceIoControlAsync(1, ReadOnlyMemory<byte>.Empty, new byte[4]).Bounded()));
        }

        await using (var disk = await kernel.OpenAsync(@"\??\RamDisk0").Bounded())
        {
            var random = new Random(7);
            for (var i = 0; i < 8; i++)
            {
                var data = new byte[512 * (i + 1)];
                random.NextBytes(data);
                var offset = 512L * random.Next(0, 1024);
                log.Add(Line($"disk write {offset}", await disk.WriteAsync(data, offset).Bounded()));
                var back = new byte[data.Length];
                log.Add(Line($"disk read {offset}", await disk.ReadAsync(back, offset).Bounded(), back));
            }

            var geometry = new byte[DiskGeometry.EncodedSize];
            log.Add(Line("disk geometry", await disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, geometry).Bounded(), geometry));
            log.Add(Line("disk tiny ioctl buffer", await disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, new byte[3]).Bounded()));
            log.Add(Line("disk unaligned", await disk.ReadAsync(new byte[512], 1).Bounded()));
            log.Add(Line("disk past end", await disk.ReadAsync(new byte[512], 1L << 20).Bounded()));
            log.Add(Line("disk over end", await disk.WriteAsync(new byte[1024], (1L << 20) - 512).Bounded()));
            log.Add(Line("disk flush", await disk.FlushAsync().Bounded()));
            var stats = new byte[16];
            await disk.DeviceIoControlAsync(Drivers.XorFilter.XorFilterIoControl.GetStatistics, ReadOnlyMemory<byte>.Empty, stats).Bounded();
            log.Add($"filter writes {BinaryPrimitives.ReadInt64LittleEndian(stats)} reads {BinaryPrimitives.ReadInt64LittleEndian(stats.AsSpan(8))}");
        }

        var reader = await kernel.OpenAsync(@"\??\Echo").Bounded();
        await using (var writer = await kernel.OpenAsync(@"\Device\Echo").Bounded())
        {
            log.Add(Line("echo write long", await writer.WriteAsync("0123456789"u8.ToArray()).Bounded()));
            var small = new byte[4];
            log.Add(Line("echo read part", await reader.ReadAsync(small).Bounded(), small));
            var rest = new byte[64];
            log.Add(Line("echo read rest", await reader.ReadAsync(rest).Bounded(), rest.AsSpan(0, 6).ToArray()));
            var waiting = new byte[8];
            var pending = reader.ReadAsync(waiting);
            log.Add($"echo pending read completed early: {pending.IsCompleted}");
            log.Add(Line("echo write wakes", await writer.WriteAsync("wake"u8.ToArray()).Bounded()));
            log.Add(Line("echo pending read", await pending.Bounded(), waiting.AsSpan(0, 4).ToArray()));
            using var cancel = new CancellationTokenSource();
            var doomed = reader.ReadAsync(new byte[8], cancellationToken: cancel.Token);
            await cancel.CancelAsync();
            log.Add(Line("echo cancelled read", await doomed.Bounded()));
            var orphan = reader.ReadAsync(new byte[8]);
            log.Add(Line("echo close", await reader.CloseAsync().Bounded()));
            log.Add(Line("echo read orphaned by close", await orphan.Bounded()));
            log.Add(Line("echo read on closed handle", await reader.ReadAsync(new byte[8]).Bounded()));
        }

        log.Add($"outstanding {kernel.OutstandingIrps}, refused {kernel.Events.Count(KernelEventKind.CompletionRefused)}");
        return log;
    }

    private static string Line(string what, IoResult result, byte[]? data = null) =>
        data is null
            ? $"{what}: {result}"
            : $"{what}: {result} sha256 {Convert.ToHexString(SHA256.HashData(data.AsSpan(0, (int)Math.Min(result.Information, data.Length))))[..16]}";
}
