namespace DriverIsolation.Drivers.Null;

/// <summary>
/// The Null driver: every request completes at once, in the dispatch routine. Reads return zeros
/// (like /dev/zero), writes swallow their data. It does no work on purpose: it is the driver the
/// benchmarks use to measure the cost of the path to a driver and back, and nothing else.
/// </summary>
public sealed class NullDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Read] = Read;
        driver[MajorFunction.Write] = Write;
        driver[MajorFunction.FlushBuffers] = Succeed;
        return NtStatus.Success;
    }

    private static NtStatus Read(DeviceObject device, Irp irp)
    {
        // The host's buffers start zeroed; clearing keeps the contract if that ever changes.
        irp.OutputBuffer.Span.Clear();
        irp.Complete(NtStatus.Success, irp.OutputBuffer.Length);
        return NtStatus.Success;
    }

    private static NtStatus Write(DeviceObject device, Irp irp)
    {
        irp.Complete(NtStatus.Success, irp.InputBuffer.Length);
        return NtStatus.Success;
    }

    private static NtStatus Succeed(DeviceObject device, Irp irp)
    {
        irp.Complete(NtStatus.Success);
        return NtStatus.Success;
    }
}
