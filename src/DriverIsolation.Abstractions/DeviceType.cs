namespace DriverIsolation;

/// <summary>Device types, with Windows' FILE_DEVICE_* numbers (they feed control codes).</summary>
public enum DeviceType : ushort
{
    Unknown = 0x22,
    Disk = 0x07,
    Null = 0x15,
    Network = 0x12,
    Serial = 0x1B,
}
