namespace DriverIsolation.TestDrivers;

/// <summary>
/// Completes every Read twice: first with Success and a buffer of 0xAA, then at once again with
/// Unsuccessful. Completes every Write once, then completes the IRP of the previous Write a second
/// time (long after the kernel finished it). The kernel must apply the first completion of each
/// IRP and refuse the rest.
/// </summary>
public sealed class DoubleCompleteDriver : IDriver
{
    private readonly Lock _gate = new();
    private Irp? _previousWrite;

    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Read] = Read;
        driver[MajorFunction.Write] = Write;
        return NtStatus.Success;
    }

    private static NtStatus Read(DeviceObject device, Irp irp)
    {
        irp.OutputBuffer.Span.Fill(0xAA);
        irp.Complete(NtStatus.Success, irp.OutputBuffer.Length);
        irp.Complete(NtStatus.Unsuccessful, 0);
        return NtStatus.Success;
    }

    private NtStatus Write(DeviceObject device, Irp irp)
    {
        Irp? previous;
        lock (_gate)
        {
            previous = _previousWrite;
            _previousWrite = irp;
        }

        irp.Complete(NtStatus.Success, irp.InputBuffer.Length);
        previous?.Complete(NtStatus.Unsuccessful, 0);
        return NtStatus.Success;
    }
}
