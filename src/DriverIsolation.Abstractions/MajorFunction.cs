namespace DriverIsolation;

/// <summary>IRP major function codes; the numbers are Windows' IRP_MJ_* values.</summary>
public enum MajorFunction : byte
{
    Create = 0x00,
    Close = 0x02,
    Read = 0x03,
    Write = 0x04,
    FlushBuffers = 0x09,
    DeviceControl = 0x0E,
    InternalDeviceControl = 0x0F,
    Cleanup = 0x12,
    Power = 0x16,
    Pnp = 0x1B,
}

public static class MajorFunctions
{
    /// <summary>Every major function a dispatch table can hold, in a stable order.</summary>
    public static ReadOnlySpan<MajorFunction> All =>
    [
        MajorFunction.Create, MajorFunction.Close, MajorFunction.Read, MajorFunction.Write,
        MajorFunction.FlushBuffers, MajorFunction.DeviceControl, MajorFunction.InternalDeviceControl,
        MajorFunction.Cleanup, MajorFunction.Power, MajorFunction.Pnp,
    ];

    /// <summary>Size of a dispatch table indexed by the raw major function value.</summary>
    public const int TableSize = 0x1C;

    public static bool IsDefined(byte value) => value switch
    {
        0x00 or 0x02 or 0x03 or 0x04 or 0x09 or 0x0E or 0x0F or 0x12 or 0x16 or 0x1B => true,
        _ => false,
    };

    /// <summary>Major functions whose completion carries data back to the caller.</summary>
    public static bool ReturnsData(this MajorFunction major) =>
        major is MajorFunction.Read or MajorFunction.DeviceControl or MajorFunction.InternalDeviceControl;
}
