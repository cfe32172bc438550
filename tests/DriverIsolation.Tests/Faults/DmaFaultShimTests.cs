using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>
/// The fault shim's DMA faults and wild write, injected into the unchanged VBlock driver after
/// three good requests (a 4 KiB write of 0xC3 at sector 0 and two reads of it): the fourth
/// request, a read of that sector, has its command aimed elsewhere, so the device writes the
/// sector's 0xC3 bytes where the fault says. What happens then is the machine's business: the
/// IOMMU blocks it (strict) or it lands (off), and kernel memory's canaries catch it there.
/// </summary>
[Collection("processes")]
public sealed class DmaFaultShimTests
{
    private const int Good = 3;
    private const int Sector = 4096;

    [Fact]
    public async Task WildDmaIntoKernelMemory_Strict_IsBlocked_TheDriverRestarted_TheDiskIntact()
    {
        await using var kernel = await Boot("wild-dma-kernel", IommuMode.Strict, IsolationModel.Process);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await GoodRequests(disk);

        var fourth = disk.ReadAsync(new byte[Sector], 0);
        await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.DriverRestarted && e.Driver == "VBlock").Bounded();

        // The read was retried on the new instance: the client never saw the crash.
        Assert.Equal(new IoResult(NtStatus.Success, Sector), await fourth.Bounded());
        var fault = Assert.Single(kernel.GetIommu()!.Faults);
        Assert.Equal(((ulong)Machine.KernelTargetAddress, DmaAccess.Write, IommuFaultReason.OutsideWindow, "VBlock"),
            (fault.Address, fault.Access, fault.Reason, fault.Domain));
        Assert.Contains("wild-dma-kernel in VBlock on Read", Single(kernel, KernelEventKind.FaultInjected).Detail, StringComparison.Ordinal);
        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Null(kernel.BugCheckReason);
        Assert.Equal(Pattern(), await ReadSector(disk));
    }

    [Fact]
    public async Task WildDmaIntoKernelMemory_Off_Lands_TheCanaryCatchesIt_ASystemCrash()
    {
        await using var kernel = await Boot("wild-dma-kernel", IommuMode.Off, IsolationModel.Process);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await GoodRequests(disk);

        // The device reports success: nothing stopped it. The data went to kernel memory instead.
        Assert.Equal(new IoResult(NtStatus.Success, Sector), await disk.ReadAsync(new byte[Sector], 0).Bounded());
        Assert.Equal(0xC3C3C3C3C3C3C3C3UL, kernel.Machine!.Memory.ReadUInt64(Machine.KernelTargetAddress));

        var integrity = kernel.VerifyKernelMemory();
        Assert.False(integrity.Intact);
        Assert.Contains("canary overwritten at 0x1100", integrity.Damage[0], StringComparison.Ordinal);
        Assert.StartsWith("kernel memory corrupted", kernel.BugCheckReason, StringComparison.Ordinal);
        Assert.Equal(0, kernel.GetIommu()!.FaultCount);
        Assert.Equal(NtStatus.SystemCrashed, (await disk.ReadAsync(new byte[Sector], 0).Bounded()).Status);
    }

    [Fact]
    public async Task WildDmaIntoKernelMemory_InKernelStrict_TheIommuStillBlocksIt_TheRequestFails()
    {
        // In-kernel isolation does not protect the kernel from a device; the IOMMU does.
        await using var kernel = await Boot("wild-dma-kernel", IommuMode.Strict, IsolationModel.InKernel);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await GoodRequests(disk);

        Assert.Equal(NtStatus.DeviceReset, (await disk.ReadAsync(new byte[Sector], 0).Bounded()).Status);

        Assert.Equal(IommuFaultReason.OutsideWindow, Assert.Single(kernel.GetIommu()!.Faults).Reason);
        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Null(kernel.BugCheckReason);
        Assert.Equal(Pattern(), await ReadSector(disk));
    }

    [Theory]
    [InlineData(IommuMode.Off)]
    [InlineData(IommuMode.Strict)]
    public async Task WildDmaIntoAnotherDriversBuffer_OffLandsInTheNicsReceiveRing_StrictBlocksIt(IommuMode mode)
    {
        await using var kernel = await Boot("wild-dma-other-driver", mode, IsolationModel.Process, withNic: true);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var (nicWindow, nicLength) = kernel.Machine!.WindowOf(@"\Device\Nic0")!.Value;
        await GoodRequests(disk);

        var fourth = await disk.ReadAsync(new byte[Sector], 0).Bounded();

        // The kernel aimed it at Nic0's receive ring, inside VNic's window.
        var detail = Single(kernel, KernelEventKind.FaultInjected).Detail!;
        var target = Convert.ToInt64(detail[(detail.LastIndexOf("0x", StringComparison.Ordinal) + 2)..], 16);
        Assert.InRange(target, nicWindow, nicWindow + nicLength - Sector);
        var ring = kernel.Machine.Memory.Span(target, Sector).ToArray();
        if (mode == IommuMode.Off)
        {
            Assert.Equal(new IoResult(NtStatus.Success, Sector), fourth);
            Assert.Equal(Pattern(), ring); // VNic's receive descriptors now hold the disk's bytes
            Assert.Equal(0, kernel.GetIommu()!.FaultCount);
        }
        else
        {
            await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.DriverRestarted && e.Driver == "VBlock").Bounded();
            Assert.Equal(new IoResult(NtStatus.Success, Sector), fourth);
            Assert.NotEqual(Pattern(), ring);
            var fault = Assert.Single(kernel.GetIommu()!.Faults);
            Assert.Equal(((ulong)target, IommuFaultReason.OutsideWindow), (fault.Address, fault.Reason));
        }

        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Equal(DriverState.Running, kernel.GetDrivers().Single(d => d.Name == "VNic").State);
    }

    [Theory]
    [InlineData("wild-dma-unmapped", IommuMode.Strict)]
    [InlineData("wild-dma-unmapped", IommuMode.Off)]
    [InlineData("dma-after-unmap", IommuMode.Strict)]
    [InlineData("dma-after-unmap", IommuMode.Off)]
    public async Task DmaToAPageOfItsOwnWindowThatIsNotMapped_StrictFaultsNotPresent_OffGoesUnnoticed(string fault, IommuMode mode)
    {
        await using var kernel = await Boot(fault, mode, IsolationModel.Process);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var (window, length) = kernel.Machine!.WindowOf(@"\Device\VBlock0")!.Value;
        await GoodRequests(disk);
        Assert.NotEqual(Pattern(), kernel.Machine.Memory.Span(window + length - Sector, Sector).ToArray());

        var fourth = await disk.ReadAsync(new byte[Sector], 0).Bounded();

        if (mode == IommuMode.Strict)
        {
            await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.DriverRestarted && e.Driver == "VBlock").Bounded();
            Assert.Equal(new IoResult(NtStatus.Success, Sector), fourth);
            var recorded = Assert.Single(kernel.GetIommu()!.Faults);
            Assert.Equal((DmaAccess.Write, IommuFaultReason.NotPresent, "VBlock"), (recorded.Access, recorded.Reason, recorded.Domain));
        }
        else if (fault == "wild-dma-unmapped")
        {
            // Nothing stops or notices it: the sector lands in the last page of the driver's own
            // window, which nothing was using.
            Assert.Equal(NtStatus.Success, fourth.Status);
            Assert.Equal(Pattern(), kernel.Machine.Memory.Span(window + length - Sector, Sector).ToArray());
            Assert.Equal(0, kernel.GetIommu()!.FaultCount);
            Assert.Equal(0, kernel.Events.Count(KernelEventKind.HostExited));
        }
        else
        {
            // With no IOMMU, a mapping is only bookkeeping: the device writes the buffer anyway
            // and the read returns the right data.
            Assert.Equal(new IoResult(NtStatus.Success, Sector), fourth);
            Assert.Equal(0, kernel.GetIommu()!.FaultCount);
            Assert.Equal(0, kernel.Events.Count(KernelEventKind.HostExited));
        }

        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Null(kernel.BugCheckReason);
        Assert.Equal(Pattern(), await ReadSector(disk));
    }

    [Fact]
    public async Task WildWrite_InKernel_LandsInKernelMemory_ASystemCrash()
    {
        await using var kernel = await Boot("wild-write", IommuMode.Strict, IsolationModel.InKernel);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await GoodRequests(disk);

        await disk.ReadAsync(new byte[Sector], 0).Bounded();

        var integrity = kernel.VerifyKernelMemory();
        Assert.False(integrity.Intact);
        Assert.Contains("canary overwritten at 0x1100", integrity.Damage[0], StringComparison.Ordinal);
        Assert.StartsWith("kernel memory corrupted", kernel.BugCheckReason, StringComparison.Ordinal);
        Assert.Equal(0, kernel.GetIommu()!.FaultCount);
    }

    [Fact]
    public async Task WildWrite_InAHost_FaultsOnAnAddressTheHostCannotMap_TheHostDies_TheKernelIsIntact()
    {
        await using var kernel = await Boot("wild-write", IommuMode.Strict, IsolationModel.Process);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        await GoodRequests(disk);

        var fourth = disk.ReadAsync(new byte[Sector], 0);
        var exited = await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.HostExited && e.Driver == "VBlock").Bounded();
        await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.DriverRestarted && e.Driver == "VBlock").Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, Sector), await fourth.Bounded());
        Assert.NotNull(exited.Detail);
        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Null(kernel.BugCheckReason);
        Assert.Equal(Pattern(), await ReadSector(disk));
    }

    private static KernelEvent Single(Microkernel kernel, KernelEventKind kind) => kernel.Events.Snapshot().Single(e => e.Kind == kind);

    private static byte[] Pattern() => Enumerable.Repeat((byte)0xC3, Sector).ToArray();

    private static async Task GoodRequests(DeviceHandle disk)
    {
        Assert.Equal(new IoResult(NtStatus.Success, Sector), await disk.WriteAsync(Pattern(), 0).Bounded());
        for (var i = 1; i < Good; i++)
        {
            Assert.Equal(Pattern(), await ReadSector(disk));
        }
    }

    private static async Task<byte[]> ReadSector(DeviceHandle disk)
    {
        var buffer = new byte[Sector];
        Assert.Equal(new IoResult(NtStatus.Success, Sector), await disk.ReadAsync(buffer, 0).Bounded());
        return buffer;
    }

    private static async Task<Microkernel> Boot(string fault, IommuMode mode, IsolationModel isolation, bool withNic = false)
    {
        var vblock = TestManifests.Sample("VBlock") with
        {
            Recovery = new RecoveryPolicy { InFlight = InFlightPolicy.Retry, BackoffBase = TimeSpan.FromMilliseconds(1), BackoffMax = TimeSpan.FromMilliseconds(5) },
            Faults = [new FaultSpec(0, fault, "requests", Good, false, 7, [])],
        };
        DriverManifest[] manifests = withNic ? [TestManifests.Sample("VNic"), vblock] : [vblock];
        var kernel = new Microkernel(new KernelOptions { IommuMode = mode, IntegrityCheckPeriod = null });
        try
        {
            await kernel.StartAsync(manifests, isolation).Bounded();
            return kernel;
        }
        catch
        {
            await kernel.DisposeAsync();
            throw;
        }
    }
}
