namespace DriverIsolation.TestDrivers;

/// <summary>A driver that hangs: its Read routine blocks its thread forever and never completes.
/// Its manifest marks Read critical, so the watchdog kills the host at the deadline.</summary>
public sealed class HangDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Read] = static (_, _) =>
        {
            using var never = new ManualResetEventSlim();
            never.Wait();
            return NtStatus.Success;
        };
        return NtStatus.Success;
    }
}
