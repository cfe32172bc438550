using DriverIsolation.Disk;
using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Tests;

/// <summary>The VBlock driver on the simulated block device, with the IOMMU on: every byte moves
/// by DMA between the device's media and the driver's buffers. Thousands of random reads and
/// writes match a model of the disk exactly, in each isolation model and IOMMU mode.</summary>
[Collection("processes")]
public sealed class BlockDeviceTests
{
    private const int Capacity = 16 << 20;

    public static TheoryData<IsolationModel, IommuMode> Configurations => new()
    {
        { IsolationModel.Process, IommuMode.Strict },
        { IsolationModel.SharedHost, IommuMode.Lazy },
        { IsolationModel.InKernel, IommuMode.Strict },
        { IsolationModel.Process, IommuMode.Off },
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public async Task RandomReadsAndWrites_MatchAModelOfTheDisk(IsolationModel isolation, IommuMode mode)
    {
        await using var kernel = new Microkernel(new KernelOptions { IommuMode = mode });
        await kernel.StartAsync([TestManifests.Sample("VBlock")], isolation).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var model = new byte[Capacity];
        var random = new Random(20261125);

        for (var round = 0; round < 50; round++)
        {
            var batch = new List<Task<(bool IsRead, int Offset, byte[] Data, IoResult Result)>>();
            var touched = new List<(int Offset, int Length)>();
            for (var i = 0; i < 40; i++)
            {
                var sectors = random.Next(1, 160); // up to 80 KiB: several commands per request
                var offset = random.Next(0, (Capacity / 512) - sectors) * 512;
                var length = sectors * 512;
                // Requests in one batch run concurrently: keep them apart so the model is exact.
                if (touched.Exists(t => offset < t.Offset + t.Length && t.Offset < offset + length))
                {
                    continue;
                }

                touched.Add((offset, length));
                if (random.Next(2) == 0)
                {
                    var data = new byte[length];
                    random.NextBytes(data);
                    data.CopyTo(model, offset);
                    batch.Add(Run(false, offset, data, disk.WriteAsync(data, offset).AsTask()));
                }
                else
                {
                    var buffer = new byte[length];
                    batch.Add(Run(true, offset, buffer, disk.ReadAsync(buffer, offset).AsTask()));
                }
            }

            foreach (var (isRead, offset, data, result) in await Task.WhenAll(batch).Bounded())
            {
                Assert.True(new IoResult(NtStatus.Success, data.Length) == result, $"{result}; bug check: {kernel.BugCheckReason}");
                if (isRead)
                {
                    Assert.True(model.AsSpan(offset, data.Length).SequenceEqual(data), $"read at {offset} differs from the model");
                }
            }
        }

        var device = Assert.IsType<BlockDeviceModel>(kernel.Machine!.Device(@"\Device\VBlock0"));
        Assert.True(device.Media.SequenceEqual(model));
        var iommu = kernel.GetIommu()!;
        Assert.Equal(mode, iommu.Mode);
        Assert.Equal(0, iommu.FaultCount);
        Assert.Equal(0, device.DmaErrors);
        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Equal(0, kernel.OutstandingIrps);
        if (mode != IommuMode.Off)
        {
            Assert.True(iommu.IotlbHits > 0 && iommu.IotlbMisses > 0);
        }
    }

    [Fact]
    public async Task Geometry_Bounds_AndAlignment_AreCheckedBeforeTheDevice()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("VBlock")], IsolationModel.Process).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();

        var geometry = new byte[DiskGeometry.EncodedSize];
        Assert.Equal(new IoResult(NtStatus.Success, DiskGeometry.EncodedSize), await disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, geometry).Bounded());
        Assert.Equal(new DiskGeometry(512, Capacity / 512), DiskGeometry.Read(geometry));
        Assert.Equal(NtStatus.InvalidParameter, (await disk.ReadAsync(new byte[100], 0).Bounded()).Status);
        Assert.Equal(NtStatus.InvalidParameter, (await disk.WriteAsync(new byte[512], 3).Bounded()).Status);
        Assert.Equal(NtStatus.EndOfFile, (await disk.ReadAsync(new byte[512], Capacity).Bounded()).Status);
        Assert.Equal(NtStatus.InvalidParameter, (await disk.WriteAsync(new byte[1024], Capacity - 512).Bounded()).Status);
        Assert.Equal(IoResult.FromStatus(NtStatus.Success), await disk.FlushAsync().Bounded());
        Assert.Equal(0, kernel.GetIommu()!.FaultCount);
    }

    [Fact]
    public async Task HostKilledUnderLoad_RetryPolicy_EveryRequestSucceeds_TheMediaOnTheDeviceSurvives()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("VBlock")], IsolationModel.Process).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var firstDomain = kernel.Machine!.Iommu.DomainOf(kernel.Machine.Device(@"\Device\VBlock0")!.Requester);
        var blocks = Enumerable.Range(0, 64).Select(b => { var d = new byte[8192]; new Random(b).NextBytes(d); return d; }).ToList();

        var writes = blocks.Select((d, b) => disk.WriteAsync(d, (long)b * 8192).AsTask()).ToList();
        kernel.KillDriverHost("VBlock");
        var results = await Task.WhenAll(writes).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();

        Assert.All(results, r => Assert.Equal(new IoResult(NtStatus.Success, 8192), r));
        for (var b = 0; b < blocks.Count; b++)
        {
            var back = new byte[8192];
            Assert.Equal(new IoResult(NtStatus.Success, 8192), await disk.ReadAsync(back, (long)b * 8192).Bounded());
            Assert.Equal(blocks[b], back);
        }

        var device = kernel.Machine.Device(@"\Device\VBlock0")!;
        Assert.True(firstDomain!.Destroyed);
        Assert.NotSame(firstDomain, kernel.Machine.Iommu.DomainOf(device.Requester));
        Assert.Equal(0, kernel.GetIommu()!.FaultCount);
        Assert.Equal(0, kernel.OutstandingIrps);
    }

    private static async Task<(bool, int, byte[], IoResult)> Run(bool isRead, int offset, byte[] data, Task<IoResult> io) =>
        (isRead, offset, data, await io.ConfigureAwait(false));
}
