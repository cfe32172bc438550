using System.Buffers.Binary;
using DriverIsolation.Disk;

namespace DriverIsolation.Drivers.RamDisk;

/// <summary>The disk control codes every disk in the system answers (<see cref="DiskIoControl"/>).</summary>
internal static class DiskControl
{
    public static NtStatus DeviceControl(DeviceObject device, Irp irp)
    {
        var disk = device.GetExtension<RamDiskDevice>();
        var code = irp.IoControlCode;
        if (code == DiskIoControl.GetDriveGeometry)
        {
            return Reply(irp, DiskGeometry.EncodedSize, output => new DiskGeometry(disk.BytesPerSector, disk.SectorCount).Write(output));
        }

        if (code == DiskIoControl.GetLengthInfo)
        {
            return Reply(irp, sizeof(long), output => BinaryPrimitives.WriteInt64LittleEndian(output, disk.Length));
        }

        irp.Complete(NtStatus.InvalidDeviceRequest);
        return NtStatus.InvalidDeviceRequest;
    }

    private static NtStatus Reply(Irp irp, int size, SpanAction write)
    {
        if (irp.OutputBuffer.Length < size)
        {
            irp.Complete(NtStatus.BufferTooSmall);
            return NtStatus.BufferTooSmall;
        }

        write(irp.OutputBuffer.Span[..size]);
        irp.Complete(NtStatus.Success, size);
        return NtStatus.Success;
    }

    private delegate void SpanAction(Span<byte> output);
}
