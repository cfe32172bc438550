namespace DriverIsolation.Kernel;

/// <summary>A loaded driver, where it runs, and how it is doing.</summary>
public sealed record DriverInfo(string Name, IsolationModel Isolation, string Host, int ProcessId, DriverState State, string? Failure, int Restarts);

/// <summary>A device, its links, its stack (top first) and its completed requests by status.</summary>
public sealed record DeviceInfo(string Name, DeviceType Type, IReadOnlyList<string> Links, IReadOnlyList<DeviceLayerInfo> Stack,
    IReadOnlyDictionary<NtStatus, long> CompletedByStatus);

/// <summary>One layer of a device stack: which driver, in which host process.</summary>
public sealed record DeviceLayerInfo(string Driver, string Host, int ProcessId, IsolationModel Isolation);
