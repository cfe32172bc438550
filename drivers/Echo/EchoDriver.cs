namespace DriverIsolation.Drivers.Echo;

/// <summary>
/// The Echo driver: a character device that hands writes back to readers. It is the sample for
/// requests that cannot complete at once: a read with nothing queued is marked pending and
/// cancelable, and completes later, when a write arrives, when the caller cancels it, or when its
/// handle is closed (Cleanup).
/// </summary>
public sealed class EchoDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver.AddDevice = static (_, device) =>
        {
            device.Extension = new EchoQueue();
            return NtStatus.Success;
        };
        driver[MajorFunction.Read] = static (device, irp) => device.GetExtension<EchoQueue>().Read(irp);
        driver[MajorFunction.Write] = static (device, irp) => device.GetExtension<EchoQueue>().Write(irp);
        driver[MajorFunction.Cleanup] = static (device, irp) => device.GetExtension<EchoQueue>().Cleanup(irp);
        return NtStatus.Success;
    }
}
