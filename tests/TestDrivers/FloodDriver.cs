using Microsoft.Extensions.Logging;

namespace DriverIsolation.TestDrivers;

/// <summary>
/// Floods the kernel on purpose. Read: 20,000 log lines at once. Write: 5,000 completions for IRPs
/// the kernel never issued. Each is past the kernel's per-second limits, so the host is killed.
/// </summary>
public sealed class FloodDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Read] = static (device, irp) =>
        {
            for (var i = 0; i < 20_000; i++)
            {
                device.Logger.LogInformation("flood line {Line}", i);
            }

            irp.Complete(NtStatus.Success, 0);
            return NtStatus.Success;
        };
        driver[MajorFunction.Write] = static (_, irp) =>
        {
            for (var i = 1; i <= 5_000; i++)
            {
                ForgerDriver.Forge(irp, irp.Id + (i * 1_000_000L)).Complete(NtStatus.Success, 0);
            }

            irp.Complete(NtStatus.Success, 0);
            return NtStatus.Success;
        };
        return NtStatus.Success;
    }
}
