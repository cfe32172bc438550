namespace DriverIsolation.Kernel;

/// <summary>A loaded driver, where it runs, and how it is doing.</summary>
/// <param name="Transport">How requests reach its host now (in-kernel: the pipe's place is a direct call; reported as Pipe).</param>
public sealed record DriverInfo(string Name, IsolationModel Isolation, string Host, int ProcessId, DriverState State, string? Failure, int Restarts,
    Transport Transport = Transport.Pipe);

/// <summary>A device, its links, its stack (top first) and its completed requests by status.</summary>
public sealed record DeviceInfo(string Name, DeviceType Type, IReadOnlyList<string> Links, IReadOnlyList<DeviceLayerInfo> Stack,
    IReadOnlyDictionary<NtStatus, long> CompletedByStatus);

/// <summary>One layer of a device stack: which driver, in which host process.</summary>
public sealed record DeviceLayerInfo(string Driver, string Host, int ProcessId, IsolationModel Isolation);

/// <summary>The IOMMU: its mode, every fault so far (and the records the log kept), IOTLB counters,
/// and the devices behind it with the driver each is bound to.</summary>
public sealed record IommuInfo(Hardware.IommuMode Mode, long FaultCount, IReadOnlyList<Hardware.IommuFault> Faults, bool FaultOverflow,
    long IotlbHits, long IotlbMisses, IReadOnlyList<HardwareDeviceInfo> Devices);

/// <summary>A simulated device: its kind, requester ID, the driver whose domain it is in (null when
/// no driver holds it), and the DMAs the IOMMU refused it.</summary>
public sealed record HardwareDeviceInfo(string Name, string Kind, string RequesterId, string? BoundTo, long DmaErrors);
