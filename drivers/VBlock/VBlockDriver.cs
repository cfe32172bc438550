using System.Buffers.Binary;
using System.Globalization;
using DriverIsolation.Disk;
using DriverIsolation.Hardware;

namespace DriverIsolation.Drivers.VBlock;

/// <summary>
/// The driver of the simulated block device. It owns no data: every sector lives on the device,
/// and every byte moves by DMA through the IOMMU. AddDevice sets up the device's queues
/// (<see cref="VBlockController"/>); Read and Write are split into commands of at most
/// maxTransferBytes, each in a bounce buffer mapped for the device only while it runs.
/// </summary>
public sealed class VBlockDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver.AddDevice = AddDevice;
        driver[MajorFunction.Read] = (device, irp) => Transfer(device, irp, isRead: true);
        driver[MajorFunction.Write] = (device, irp) => Transfer(device, irp, isRead: false);
        driver[MajorFunction.FlushBuffers] = (device, irp) => device.GetExtension<VBlockController>().Submit(irp, BlockDeviceSpec.OpFlush);
        driver[MajorFunction.DeviceControl] = DeviceControl;
        driver.Unload = _ => { };
        return NtStatus.Success;
    }

    private static NtStatus AddDevice(DriverObject driver, DeviceObject device)
    {
        if (device.Hardware is not { Kind: "block" } hardware)
        {
            return NtStatus.DeviceNotReady; // No block device behind it: nothing to drive.
        }

        if (!TryParameter(device, "queueDepth", 16, out var depth) || depth is < 2 or > BlockDeviceSpec.MaxQueueDepth ||
            !TryParameter(device, "maxTransferBytes", 32768, out var maxTransfer) || maxTransfer <= 0 || maxTransfer % BlockDeviceSpec.SectorSize != 0 ||
            !long.TryParse(hardware.Properties.GetValueOrDefault("capacityBytes"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var capacity))
        {
            return NtStatus.InvalidParameter;
        }

        try
        {
            device.Extension = new VBlockController(hardware, (int)depth, (int)maxTransfer, capacity);
        }
        catch (InsufficientMemoryException)
        {
            return NtStatus.InsufficientResources; // The DMA window is too small for the queues asked for.
        }

        return NtStatus.Success;
    }

    private static NtStatus Transfer(DeviceObject device, Irp irp, bool isRead)
    {
        var controller = device.GetExtension<VBlockController>();
        var length = isRead ? irp.OutputBuffer.Length : irp.InputBuffer.Length;
        if (irp.Offset < 0 || irp.Offset % BlockDeviceSpec.SectorSize != 0 || length % BlockDeviceSpec.SectorSize != 0)
        {
            irp.Complete(NtStatus.InvalidParameter);
            return NtStatus.InvalidParameter;
        }

        if (irp.Offset >= controller.Capacity || irp.Offset + length > controller.Capacity)
        {
            var status = isRead && irp.Offset >= controller.Capacity ? NtStatus.EndOfFile : NtStatus.InvalidParameter;
            irp.Complete(status);
            return status;
        }

        if (length == 0)
        {
            irp.Complete(NtStatus.Success);
            return NtStatus.Success;
        }

        return controller.Submit(irp, isRead ? BlockDeviceSpec.OpRead : BlockDeviceSpec.OpWrite);
    }

    private static NtStatus DeviceControl(DeviceObject device, Irp irp)
    {
        var controller = device.GetExtension<VBlockController>();
        if (irp.IoControlCode == DiskIoControl.GetDriveGeometry && irp.OutputBuffer.Length >= DiskGeometry.EncodedSize)
        {
            new DiskGeometry(BlockDeviceSpec.SectorSize, controller.Capacity / BlockDeviceSpec.SectorSize).Write(irp.OutputBuffer.Span);
            irp.Complete(NtStatus.Success, DiskGeometry.EncodedSize);
            return NtStatus.Success;
        }

        if (irp.IoControlCode == DiskIoControl.GetLengthInfo && irp.OutputBuffer.Length >= sizeof(long))
        {
            BinaryPrimitives.WriteInt64LittleEndian(irp.OutputBuffer.Span, controller.Capacity);
            irp.Complete(NtStatus.Success, sizeof(long));
            return NtStatus.Success;
        }

        var status = irp.IoControlCode == DiskIoControl.GetDriveGeometry || irp.IoControlCode == DiskIoControl.GetLengthInfo
            ? NtStatus.BufferTooSmall
            : NtStatus.InvalidDeviceRequest;
        irp.Complete(status);
        return status;
    }

    private static bool TryParameter(DeviceObject device, string name, long fallback, out long value)
    {
        value = fallback;
        return !device.Parameters.TryGetValue(name, out var text) ||
            long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out value);
    }
}
