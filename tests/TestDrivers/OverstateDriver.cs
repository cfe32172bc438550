namespace DriverIsolation.TestDrivers;

/// <summary>
/// Lies about lengths: completes a Read claiming twice the bytes the buffer holds, then (the
/// verifier having refused that) completes it honestly. Also completes a Read with Pending, which
/// no completion may carry. The caller must see only the honest completion.
/// </summary>
public sealed class OverstateDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Read] = Read;
        return NtStatus.Success;
    }

    private static NtStatus Read(DeviceObject device, Irp irp)
    {
        irp.OutputBuffer.Span.Fill(0x11);
        irp.Complete(NtStatus.Success, irp.OutputBuffer.Length * 2L + 1);
        irp.Complete(NtStatus.Pending, 0);
        irp.Complete(NtStatus.Success, irp.OutputBuffer.Length);
        return NtStatus.Success;
    }
}
