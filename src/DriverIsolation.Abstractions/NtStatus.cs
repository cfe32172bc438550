namespace DriverIsolation;

/// <summary>
/// NTSTATUS-like completion codes. Values follow Windows where a Windows code exists; codes this
/// project adds use the customer bit (0x2000_0000) so they never collide with a real NTSTATUS.
/// Severity is in the top two bits: 00 success, 01 informational, 10 warning, 11 error.
/// </summary>
public enum NtStatus : uint
{
    Success = 0x0000_0000,
    Pending = 0x0000_0103,

    EndOfFile = 0xC000_0011,
    Unsuccessful = 0xC000_0001,
    NotImplemented = 0xC000_0002,
    InvalidHandle = 0xC000_0008,
    InvalidParameter = 0xC000_000D,
    InvalidDeviceRequest = 0xC000_0010,
    BufferTooSmall = 0xC000_0023,
    ObjectNameNotFound = 0xC000_0034,
    InsufficientResources = 0xC000_009A,
    DeviceNotReady = 0xC000_00A3,
    IoTimeout = 0xC000_00B5,
    NotSupported = 0xC000_00BB,
    InternalError = 0xC000_00E5,
    Cancelled = 0xC000_0120,
    InvalidDeviceState = 0xC000_0184,
    DriverProcessTerminated = 0xC000_0450,

    /// <summary>The device was reset (its driver restarted) while the request was outstanding.</summary>
    DeviceReset = 0xE000_0001,

    /// <summary>The kernel refused a driver's message (ownership, exactly-once, limits).</summary>
    VerifierViolation = 0xE000_0002,

    /// <summary>The driver is quarantined after too many failures; its devices fail fast.</summary>
    DeviceQuarantined = 0xE000_0003,

    /// <summary>The (simulated) system is down: an in-kernel driver crashed the kernel. The
    /// simulation answers callers with this instead of leaving them waiting forever.</summary>
    SystemCrashed = 0xE000_0004,
}

public static class NtStatusExtensions
{
    /// <summary>True for success and informational codes (severity 00 or 01), as NT_SUCCESS.</summary>
    public static bool IsSuccess(this NtStatus status) => (uint)status >> 31 == 0;

    /// <summary>True for error-severity codes (severity 11), as NT_ERROR.</summary>
    public static bool IsError(this NtStatus status) => (uint)status >> 30 == 3;
}
