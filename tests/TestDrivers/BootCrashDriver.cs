namespace DriverIsolation.TestDrivers;

/// <summary>A driver whose content update is corrupt: DriverEntry throws, on every load. In a host
/// that kills the host while it loads; the watchdog must end the loop in quarantine.</summary>
public sealed class BootCrashDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver) =>
        throw new InvalidDataException("content update: template has 20 fields, the interpreter reads field 21");
}
