using Microsoft.Extensions.Logging;

namespace DriverIsolation.Kernel;

/// <summary>The kernel's log lines, with stable event ids, one per line (1xxx hosts, 2xxx drivers, 3xxx IRPs,
/// 4xxx recovery, 5xxx the IOMMU).</summary>
internal static partial class Log
{
    [LoggerMessage(1001, LogLevel.Information, "Host {Host} started as PID {ProcessId} ({Isolation})")]
    public static partial void HostStarted(ILogger logger, string host, int processId, string isolation);

    [LoggerMessage(1002, LogLevel.Warning, "Host {Host} (PID {ProcessId}) exited: {Reason}; {Irps} outstanding IRPs completed with DriverProcessTerminated")]
    public static partial void HostExited(ILogger logger, string host, int processId, string reason, int irps);

    [LoggerMessage(1006, LogLevel.Information, "Host {Host} (PID {ProcessId}) stopped: {Reason}")]
    public static partial void HostStopped(ILogger logger, string host, int processId, string reason);

    [LoggerMessage(1003, LogLevel.Warning, "Host {Host}: {Line}")]
    public static partial void HostOutput(ILogger logger, string host, string line);

    [LoggerMessage(1004, LogLevel.Error, "Host {Host} broke the protocol and is killed: {Reason}")]
    public static partial void ProtocolViolation(ILogger logger, string host, string reason);

    [LoggerMessage(1005, LogLevel.Warning, "Host {Host} refused at the handshake: {Reason}")]
    public static partial void HandshakeRefused(ILogger logger, string host, string reason);

    [LoggerMessage(1008, LogLevel.Warning, "A second connection to the pipe of host {Host} was refused: {Reason}")]
    public static partial void ConnectionRefused(ILogger logger, string host, string reason);

    [LoggerMessage(1007, LogLevel.Information, "Removed {Files} files that killed kernels left behind ({Bytes} bytes)")]
    public static partial void LeftoversRemoved(ILogger logger, int files, long bytes);

    [LoggerMessage(2001, LogLevel.Information, "Driver {Driver} loaded ({Isolation}, host {Host})")]
    public static partial void DriverLoaded(ILogger logger, string driver, string isolation, string host);

    [LoggerMessage(2002, LogLevel.Error, "Driver {Driver} failed to load: {Reason}")]
    public static partial void DriverLoadFailed(ILogger logger, string driver, string reason);

    [LoggerMessage(2003, LogLevel.Information, "Device {Device} added by {Driver}")]
    public static partial void DeviceAdded(ILogger logger, string device, string driver);

    [LoggerMessage(EventId = 2004, Message = "{Driver}: {Message}")]
    public static partial void DriverLog(ILogger logger, LogLevel level, string driver, string message);

    [LoggerMessage(EventId = 2005, Message = "Driver {DriverId}: {Message}")]
    public static partial void DriverLogById(ILogger logger, LogLevel level, int driverId, string message);

    [LoggerMessage(4001, LogLevel.Warning, "Driver {Driver} restarts in {Delay} (attempt {Attempt}, {Failures} recent failures)")]
    public static partial void RestartScheduled(ILogger logger, string driver, TimeSpan delay, int attempt, int failures);

    [LoggerMessage(4002, LogLevel.Information, "Driver {Driver} restarted in host {Host} (PID {ProcessId}) after {RecoveryMs:F1} ms; {Parked} parked IRPs re-issued, {Handles} handles re-opened")]
    public static partial void DriverRestarted(ILogger logger, string driver, string host, int processId, double recoveryMs, int parked, int handles);

    [LoggerMessage(4003, LogLevel.Error, "Driver {Driver} quarantined: {Reason}")]
    public static partial void DriverQuarantined(ILogger logger, string driver, string reason);

    [LoggerMessage(4004, LogLevel.Critical, "SAFE MODE: boot-critical driver {Driver} is quarantined; the system runs without it")]
    public static partial void SafeMode(ILogger logger, string driver);

    [LoggerMessage(4005, LogLevel.Error, "Watchdog kills host {Host}: {Reason}")]
    public static partial void WatchdogKill(ILogger logger, string host, string reason);

    [LoggerMessage(3001, LogLevel.Warning, "Verifier: refused a {What} of IRP {IrpId} from {Host}: {Reason}")]
    public static partial void CompletionRefused(ILogger logger, string what, long irpId, string host, string reason);

    [LoggerMessage(3005, LogLevel.Error, "Work a caller's continuation left to host {Host}'s reader failed")]
    public static partial void BatchFlushFailed(ILogger logger, Exception exception, string host);

    [LoggerMessage(3002, LogLevel.Warning, "IRP {IrpId} ({Major} to {Device}) passed its deadline of {Timeout}")]
    public static partial void IrpTimedOut(ILogger logger, long irpId, MajorFunction major, string device, TimeSpan timeout);

    [LoggerMessage(3003, LogLevel.Critical, "BUGCHECK: {Reason}")]
    public static partial void BugCheck(ILogger logger, string reason);

    [LoggerMessage(3004, LogLevel.Critical, "Kernel memory corrupted: {Damage}")]
    public static partial void KernelMemoryCorrupted(ILogger logger, string damage);

    [LoggerMessage(5001, LogLevel.Warning, "IOMMU fault {Fault}")]
    public static partial void IommuFault(ILogger logger, string fault);
}
