using System.Buffers.Binary;
using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;
using DriverIsolation.TestDrivers;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// A driver in its own process programs its device to DMA where it must not. With the IOMMU on,
/// the DMA is blocked, recorded exactly and blamed on the driver, whose host is killed and
/// restarted (or quarantined) while the other driver's data stays intact; with it off, the DMA
/// lands, and a DMA into kernel memory is a system crash.
/// </summary>
[Collection("processes")]
public sealed class IommuContainmentTests
{
    private const ulong KernelCanary = 0x1100;

    [Fact]
    public async Task WildDmaIntoKernelMemory_Strict_FaultRecorded_DriverRestarted_OthersIntact()
    {
        await using var kernel = await Boot(IommuMode.Strict);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await using var wild = await kernel.OpenAsync(@"\Device\WildBlock").Bounded();
        var data = Pattern(64 << 10);
        Assert.Equal(NtStatus.Success, (await disk.WriteAsync(data, 0).Bounded()).Status);

        var result = await DmaTo(wild, KernelCanary).Bounded();
        var restarted = await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.DriverRestarted && e.Driver == "WildBlock").Bounded();

        Assert.Equal(IoResult.FromStatus(NtStatus.DriverProcessTerminated), result);
        var fault = Assert.Single(kernel.GetIommu()!.Faults);
        var requester = kernel.GetIommu()!.Devices.Single(d => d.Name == @"\Device\WildBlock").RequesterId;
        Assert.Equal((requester, KernelCanary, DmaAccess.Write, IommuFaultReason.OutsideWindow, "WildBlock"),
            (fault.Requester.ToString(), fault.Address, fault.Access, fault.Reason, fault.Domain));
        Assert.Contains("IOMMU fault", kernel.Events.Snapshot().Single(e => e.Kind == KernelEventKind.WatchdogKill).Detail, StringComparison.Ordinal);
        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Null(kernel.BugCheckReason);
        Assert.Equal(data, await ReadBack(disk, data.Length));
        Assert.Equal(DriverState.Running, kernel.GetDrivers().Single(d => d.Name == "WildBlock").State);
        Assert.Contains("WildBlock", restarted.Driver, StringComparison.Ordinal);

        // The new instance has fresh windows and works.
        Assert.Equal(new IoResult(NtStatus.Success, 0), await wild.DeviceIoControlAsync(WildBlockDriver.ReadProperly, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty).Bounded());
        Assert.Equal(1, kernel.GetIommu()!.FaultCount);
    }

    [Fact]
    public async Task WildDmaIntoKernelMemory_Off_LandsAndTheKernelCrashes()
    {
        var time = new FakeTimeProvider();
        await using var kernel = await Boot(IommuMode.Off, time);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await using var wild = await kernel.OpenAsync(@"\Device\WildBlock").Bounded();

        var result = await DmaTo(wild, KernelCanary).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 0), result); // the device reports success: nothing stopped it
        Assert.Null(kernel.BugCheckReason);
        time.Advance(new KernelOptions().IntegrityCheckPeriod!.Value); // the periodic check finds it
        Assert.NotNull(kernel.BugCheckReason);
        var integrity = kernel.VerifyKernelMemory();
        Assert.False(integrity.Intact);
        Assert.Contains("canary overwritten at 0x1100", integrity.Damage[0], StringComparison.Ordinal);
        Assert.StartsWith("kernel memory corrupted", kernel.BugCheckReason, StringComparison.Ordinal);
        Assert.Equal(1, kernel.Events.Count(KernelEventKind.KernelMemoryCorrupted));
        Assert.Equal(0, kernel.GetIommu()!.FaultCount);
        Assert.Equal(NtStatus.SystemCrashed, (await disk.ReadAsync(new byte[512], 0).Bounded()).Status);
    }

    [Fact]
    public async Task WildDmaIntoAnotherDriversBuffer_StrictBlocksIt_OffLetsItLand()
    {
        foreach (var mode in new[] { IommuMode.Strict, IommuMode.Off })
        {
            await using var kernel = await Boot(mode);
            await using var wild = await kernel.OpenAsync(@"\Device\WildBlock").Bounded();
            var (victim, length) = kernel.Machine!.WindowOf(@"\Device\VBlock0")!.Value;
            // The last page of VBlock's window: a bounce buffer no command is using.
            var target = victim + length - 4096;
            kernel.Machine.Memory.Span(target, 512).Fill(0x5a);

            var result = await DmaTo(wild, (ulong)target).Bounded();

            var landed = !kernel.Machine.Memory.Span(target, 512).ToArray().All(b => b == 0x5a);
            if (mode == IommuMode.Strict)
            {
                Assert.Equal(NtStatus.DriverProcessTerminated, result.Status);
                Assert.False(landed);
                Assert.Equal(IommuFaultReason.OutsideWindow, Assert.Single(kernel.GetIommu()!.Faults).Reason);
            }
            else
            {
                Assert.Equal(new IoResult(NtStatus.Success, 0), result);
                Assert.True(landed);
                Assert.True(kernel.VerifyKernelMemory().Intact); // not kernel memory: nothing notices
            }
        }
    }

    [Fact]
    public async Task DmaAfterUnmap_StrictFaultsAtOnce_LazyLandsUntilTheFlush()
    {
        foreach (var mode in new[] { IommuMode.Strict, IommuMode.Lazy })
        {
            var time = new FakeTimeProvider();
            await using var kernel = await Boot(mode, time);
            await using var wild = await kernel.OpenAsync(@"\Device\WildBlock").Bounded();

            var result = await wild.DeviceIoControlAsync(WildBlockDriver.DmaAfterUnmap, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty).Bounded();

            if (mode == IommuMode.Strict)
            {
                Assert.Equal(NtStatus.DriverProcessTerminated, result.Status);
                Assert.Equal(IommuFaultReason.NotPresent, Assert.Single(kernel.GetIommu()!.Faults).Reason);
            }
            else
            {
                // Both reads succeeded: the stale IOTLB entry let the second one through.
                Assert.Equal(new IoResult(NtStatus.Success, 0), result);
                Assert.Equal(0, kernel.GetIommu()!.FaultCount);
                Assert.Equal(1, kernel.Machine!.Iommu.PendingInvalidations);
                time.Advance(TimeSpan.FromMilliseconds(10));
                Assert.Equal(0, kernel.Machine.Iommu.PendingInvalidations);
            }
        }
    }

    [Fact]
    public async Task IommuFault_QuarantinePolicy_QuarantinesTheDriverAndTheOthersServe()
    {
        var wildManifest = TestManifests.Test("WildBlock");
        wildManifest = wildManifest with { Recovery = wildManifest.Recovery with { OnIommuFault = IommuFaultPolicy.Quarantine } };
        await using var kernel = new Microkernel(new KernelOptions { IommuMode = IommuMode.Strict });
        await kernel.StartAsync([TestManifests.Sample("VBlock"), wildManifest]).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await using var wild = await kernel.OpenAsync(@"\Device\WildBlock").Bounded();

        Assert.Equal(NtStatus.DriverProcessTerminated, (await DmaTo(wild, KernelCanary).Bounded()).Status);
        var quarantined = await kernel.Events.WaitForAsync(KernelEventKind.DriverQuarantined).Bounded();

        Assert.Equal("WildBlock", quarantined.Driver);
        Assert.StartsWith("IOMMU fault: #1", quarantined.Detail, StringComparison.Ordinal);
        Assert.Equal(NtStatus.DeviceQuarantined, (await DmaTo(wild, KernelCanary).Bounded()).Status);
        var data = Pattern(4096);
        Assert.Equal(NtStatus.Success, (await disk.WriteAsync(data, 8192).Bounded()).Status);
        var back = new byte[4096];
        Assert.Equal(NtStatus.Success, (await disk.ReadAsync(back, 8192).Bounded()).Status);
        Assert.Equal(data, back);
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.DriverRestarted));
    }

    private static async Task<Microkernel> Boot(IommuMode mode, TimeProvider? time = null)
    {
        var kernel = new Microkernel(new KernelOptions { IommuMode = mode, HeartbeatPeriod = time is null ? TimeSpan.FromSeconds(1) : null }, timeProvider: time);
        try
        {
            await kernel.StartAsync([TestManifests.Sample("VBlock"), TestManifests.Test("WildBlock")], IsolationModel.Process).Bounded();
            return kernel;
        }
        catch
        {
            await kernel.DisposeAsync();
            throw;
        }
    }

    private static Task<IoResult> DmaTo(Kernel.DeviceHandle wild, ulong address)
    {
        var input = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(input, address);
        return wild.DeviceIoControlAsync(WildBlockDriver.DmaTo, input, Memory<byte>.Empty).AsTask();
    }

    private static async Task<byte[]> ReadBack(Kernel.DeviceHandle disk, int length)
    {
        var buffer = new byte[length];
        Assert.Equal(NtStatus.Success, (await disk.ReadAsync(buffer, 0).Bounded()).Status);
        return buffer;
    }

    private static byte[] Pattern(int length)
    {
        var data = new byte[length];
        new Random(length).NextBytes(data);
        return data;
    }
}
