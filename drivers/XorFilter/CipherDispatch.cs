using System.Buffers.Binary;

namespace DriverIsolation.Drivers.XorFilter;

/// <summary>The filter's dispatch routines. The IRP's buffers are system buffers, so changing the
/// write data in place never touches the application's memory.</summary>
internal static class CipherDispatch
{
    public static NtStatus Write(DeviceObject device, Irp irp)
    {
        var filter = device.GetExtension<FilterDevice>();
        filter.Apply(irp.InputBuffer.Span);
        filter.CountWrite();
        return device.CallLowerDriver(irp);
    }

    public static NtStatus Read(DeviceObject device, Irp irp) => device.CallLowerDriver(irp, OnReadCompleted);

    /// <summary>Answers <see cref="XorFilterIoControl.GetStatistics"/> itself; every other control
    /// code belongs to the disk below.</summary>
    public static NtStatus DeviceControl(DeviceObject device, Irp irp)
    {
        if (irp.IoControlCode != XorFilterIoControl.GetStatistics)
        {
            return device.CallLowerDriver(irp);
        }

        if (irp.OutputBuffer.Length < XorFilterIoControl.StatisticsSize)
        {
            irp.Complete(NtStatus.BufferTooSmall);
            return NtStatus.BufferTooSmall;
        }

        var filter = device.GetExtension<FilterDevice>();
        var output = irp.OutputBuffer.Span;
        BinaryPrimitives.WriteInt64LittleEndian(output, filter.Writes);
        BinaryPrimitives.WriteInt64LittleEndian(output[8..], filter.Reads);
        irp.Complete(NtStatus.Success, XorFilterIoControl.StatisticsSize);
        return NtStatus.Success;
    }

    /// <summary>Runs when the disk completed the read: decrypt what it returned, then complete.</summary>
    private static void OnReadCompleted(DeviceObject device, Irp irp, IoResult lower)
    {
        var filter = device.GetExtension<FilterDevice>();
        if (lower.IsSuccess)
        {
            var count = (int)Math.Min(lower.Information, irp.OutputBuffer.Length);
            filter.Apply(irp.OutputBuffer.Span[..count]);
            filter.CountRead();
        }

        irp.Complete(lower.Status, lower.Information);
    }
}
