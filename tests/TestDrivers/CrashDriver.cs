namespace DriverIsolation.TestDrivers;

/// <summary>
/// Holds every Read pending (so the kernel has outstanding IRPs in this driver), and throws an
/// unhandled exception on any Write: in a host process that kills the host; in-kernel it is a
/// bug check.
/// </summary>
public sealed class CrashDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Read] = static (_, irp) =>
        {
            irp.MarkPending();
            return NtStatus.Pending;
        };
        driver[MajorFunction.Write] = static (device, _) =>
            throw new InvalidOperationException($"{device.Name}: simulated driver bug");
        return NtStatus.Success;
    }
}
