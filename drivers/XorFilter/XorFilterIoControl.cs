namespace DriverIsolation.Drivers.XorFilter;

/// <summary>The filter's own control code (its public header).</summary>
public static class XorFilterIoControl
{
    /// <summary>Returns two little-endian Int64s: writes and reads the filter has transformed.</summary>
    public static readonly uint GetStatistics = IoControlCode.Make(DeviceType.Disk, 0x900);

    public const int StatisticsSize = 16;
}
