namespace DriverIsolation;

/// <summary>Transfer method bits of a control code (only buffered I/O is modelled).</summary>
public enum IoControlMethod : byte { Buffered = 0, InDirect = 1, OutDirect = 2, Neither = 3 }

/// <summary>Builds and takes apart control codes as Windows' CTL_CODE macro does:
/// <c>DeviceType &lt;&lt; 16 | Access &lt;&lt; 14 | Function &lt;&lt; 2 | Method</c>.</summary>
public static class IoControlCode
{
    public const byte AnyAccess = 0, ReadAccess = 1, WriteAccess = 2;

    public static uint Make(DeviceType deviceType, ushort function, IoControlMethod method = IoControlMethod.Buffered, byte access = AnyAccess) =>
        ((uint)deviceType << 16) | ((uint)(access & 3) << 14) | ((uint)(function & 0xFFF) << 2) | (uint)method;

    public static DeviceType DeviceTypeOf(uint code) => (DeviceType)(code >> 16);

    public static ushort FunctionOf(uint code) => (ushort)((code >> 2) & 0xFFF);
}
