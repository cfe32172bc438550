namespace DriverIsolation.Drivers.RamDisk;

/// <summary>Read, Write and Flush: validate, move the bytes, complete. Nothing here waits, so
/// every request completes inside its dispatch routine.</summary>
internal static class DiskDispatch
{
    public static NtStatus Read(DeviceObject device, Irp irp)
    {
        var disk = device.GetExtension<RamDiskDevice>();
        var length = irp.OutputBuffer.Length;
        var status = disk.Validate(irp.Offset, length, isRead: true);
        if (status != NtStatus.Success)
        {
            irp.Complete(status);
            return status;
        }

        disk.Read(irp.Offset, irp.OutputBuffer.Span);
        irp.Complete(NtStatus.Success, length);
        return NtStatus.Success;
    }

    public static NtStatus Write(DeviceObject device, Irp irp)
    {
        var disk = device.GetExtension<RamDiskDevice>();
        var length = irp.InputBuffer.Length;
        var status = disk.Validate(irp.Offset, length, isRead: false);
        if (status != NtStatus.Success)
        {
            irp.Complete(status);
            return status;
        }

        disk.Write(irp.Offset, irp.InputBuffer.Span);
        irp.Complete(NtStatus.Success, length);
        return NtStatus.Success;
    }

    /// <summary>Memory has no cache to flush; the request still travels the stack so filters see it.</summary>
    public static NtStatus Flush(DeviceObject device, Irp irp)
    {
        irp.Complete(NtStatus.Success);
        return NtStatus.Success;
    }
}
