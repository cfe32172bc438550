using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Tests;

/// <summary>Two simulated NICs wired back to back, driven by VNic with the IOMMU on: frames
/// pass both ways, each once and whole, by DMA through the rings; frames sent one after another
/// arrive in order.</summary>
[Collection("processes")]
public sealed class NicTests
{
    public static TheoryData<IsolationModel, IommuMode> Configurations => new()
    {
        { IsolationModel.Process, IommuMode.Strict },
        { IsolationModel.SharedHost, IommuMode.Lazy },
        { IsolationModel.InKernel, IommuMode.Strict },
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public async Task FramesPassBothWays_EachOnceAndWhole_SequentialOnesInOrder(IsolationModel isolation, IommuMode mode)
    {
        const int Frames = 300;
        const int Ordered = 100;
        await using var kernel = new Microkernel(new KernelOptions { IommuMode = mode });
        await kernel.StartAsync([TestManifests.Sample("VNic")], isolation).Bounded();
        await using var nic0 = await kernel.OpenAsync(@"\??\Nic0").Bounded();
        await using var nic1 = await kernel.OpenAsync(@"\??\Nic1").Bounded();

        // Batches below what the driver keeps for readers (256 frames); in each, some reads are
        // waiting before their frames arrive and the others find their frames already there.
        var atNic1 = new List<byte[]>();
        var atNic0 = new List<byte[]>();
        for (var batch = 0; batch < Frames; batch += 100)
        {
            var early = Enumerable.Range(0, 20).Select(_ => Receive(nic1)).ToList();
            var sends = new List<Task<IoResult>>();
            for (var i = batch; i < batch + 100; i++)
            {
                sends.Add(nic0.WriteAsync(Frame(0, i)).AsTask());
                sends.Add(nic1.WriteAsync(Frame(1, i)).AsTask());
            }

            Assert.All(await Task.WhenAll(sends).Bounded(), r => Assert.Equal(NtStatus.Success, r.Status));
            atNic1.AddRange(await Task.WhenAll(early).Bounded());
            for (var i = early.Count; i < 100; i++)
            {
                atNic1.Add(await Receive(nic1).Bounded());
            }

            for (var i = 0; i < 100; i++)
            {
                atNic0.Add(await Receive(nic0).Bounded());
            }
        }

        // Writes in flight together, and reads waiting together, have no order among them (the
        // host serves requests on several threads); every frame is there, whole, exactly once.
        Assert.Equal(Enumerable.Range(0, Frames).Select(i => Frame(0, i)), atNic1.OrderBy(f => BitConverter.ToInt32(f, 1)));
        Assert.Equal(Enumerable.Range(0, Frames).Select(i => Frame(1, i)), atNic0.OrderBy(f => BitConverter.ToInt32(f, 1)));

        // Writes one after another arrive in the order they were sent.
        for (var i = 0; i < Ordered; i++)
        {
            Assert.Equal(NtStatus.Success, (await nic1.WriteAsync(Frame(1, Frames + i)).Bounded()).Status);
        }

        for (var i = 0; i < Ordered; i++)
        {
            Assert.Equal(Frame(1, Frames + i), await Receive(nic0).Bounded());
        }

        var iommu = kernel.GetIommu()!;
        Assert.Equal(0, iommu.FaultCount);
        var models = kernel.Machine!.Devices.OfType<NicModel>().ToList();
        Assert.Equal(2, models.Count);
        var sent = models.ToDictionary(m => m.Name, m => (m.FramesSent, m.FramesReceived, m.FramesDropped));
        Assert.Equal((Frames, Frames + Ordered, 0L), sent[@"\Device\Nic0"]);
        Assert.Equal((Frames + Ordered, Frames, 0L), sent[@"\Device\Nic1"]);
        Assert.True(kernel.VerifyKernelMemory().Intact);
    }

    [Fact]
    public async Task PendingRead_IsCancelled()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("VNic")], IsolationModel.Process).Bounded();
        await using var nic0 = await kernel.OpenAsync(@"\??\Nic0").Bounded();

        var read = nic0.ReadAsync(new byte[2048]);
        Assert.False(read.IsCompleted);
        nic0.CancelIo();

        Assert.Equal(IoResult.FromStatus(NtStatus.Cancelled), await read.Bounded());
    }

    [Fact]
    public async Task DmaWindowsOverTheDriversLimit_TheDeviceIsNotAdded_WithTheReason()
    {
        // VNic asks for two windows of 288 KiB; the limit lets it have one.
        await using var kernel = new Microkernel(new KernelOptions { MaxDmaBytesPerDriver = 512 << 10 });
        await kernel.StartAsync([TestManifests.Sample("VNic")], IsolationModel.Process).Bounded();

        var failed = kernel.Events.Snapshot().Single(e => e.Kind == KernelEventKind.DriverLoadFailed);
        Assert.Equal(@"no hardware for \Device\Nic1: VNic would hold 589824 bytes of DMA windows, over the limit of 524288 (KernelOptions.MaxDmaBytesPerDriver)", failed.Detail);
        Assert.Null(kernel.GetDevice(@"\Device\Nic1"));
        Assert.DoesNotContain(kernel.GetIommu()!.Devices, d => d.Name == @"\Device\Nic1" && d.BoundTo is not null);
    }

    [Fact]
    public void Manifest_PeerThatIsNoNic_IsRefused()
    {
        var vnic = TestManifests.Sample("VNic");
        var broken = vnic with { Devices = [vnic.Devices[0] with { Hardware = vnic.Devices[0].Hardware! with { Peer = @"\Device\Nowhere" } }, vnic.Devices[1]] };

        var error = Assert.Throws<ManifestException>(() => ManifestSet.Validate([broken]));

        Assert.Contains("$.devices[0].hardware.peer", error.Message, StringComparison.Ordinal);
        Assert.Contains(@"""\Device\Nowhere"" is not another NIC", error.Message, StringComparison.Ordinal);
    }

    private static async Task<byte[]> Receive(Kernel.DeviceHandle nic)
    {
        var buffer = new byte[2048];
        var result = await nic.ReadAsync(buffer).ConfigureAwait(false);
        Assert.Equal(NtStatus.Success, result.Status);
        return buffer[..(int)result.Information];
    }

    private static byte[] Frame(int from, int sequence)
    {
        var frame = new byte[64 + (sequence % 1400)];
        frame[0] = (byte)from;
        BitConverter.GetBytes(sequence).CopyTo(frame, 1);
        for (var i = 5; i < frame.Length; i++)
        {
            frame[i] = (byte)(sequence + i);
        }

        return frame;
    }
}
