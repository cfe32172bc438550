namespace DriverIsolation.TestDrivers;

/// <summary>A driver that leaks handles: every Write opens 100 files and never closes them.</summary>
public sealed class LeakerDriver : IDriver
{
    private const int PerWrite = 100;
    private readonly List<FileStream> _kept = [];

    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Write] = (_, irp) =>
        {
            lock (_kept)
            {
                for (var i = 0; i < PerWrite; i++)
                {
                    _kept.Add(new FileStream("/dev/null", FileMode.Open, FileAccess.Read));
                }
            }

            irp.Complete(NtStatus.Success, irp.InputBuffer.Length);
            return NtStatus.Success;
        };
        return NtStatus.Success;
    }
}
