using MessagePack;

namespace DriverIsolation.Protocol;

/// <summary>
/// Every message on a kernel-host pipe. A closed set: the union key is the message kind and is
/// never reused. Direction is given per message (K = kernel, H = host).
/// </summary>
[Union(0, typeof(Hello))]
[Union(1, typeof(Welcome))]
[Union(2, typeof(Refused))]
[Union(3, typeof(LoadDriver))]
[Union(4, typeof(DriverLoaded))]
[Union(5, typeof(AddDevice))]
[Union(6, typeof(DeviceAdded))]
[Union(7, typeof(Dispatch))]
[Union(8, typeof(Complete))]
[Union(9, typeof(PassDown))]
[Union(10, typeof(LowerCompleted))]
[Union(11, typeof(Cancel))]
[Union(12, typeof(Ping))]
[Union(13, typeof(Pong))]
[Union(14, typeof(Log))]
[Union(15, typeof(Shutdown))]
[Union(16, typeof(DmaMap))]
[Union(17, typeof(DmaUnmap))]
[Union(18, typeof(RegisterWrite))]
[Union(19, typeof(Interrupt))]
[Union(20, typeof(FaultInjected))]
[Union(21, typeof(UseRing))]
[Union(22, typeof(RingReady))]
[Union(23, typeof(RingDoorbell))]
[Union(24, typeof(HostSpan))]
[Union(25, typeof(ArmFault))]
[Union(26, typeof(PrepareDriver))]
public abstract record Message;

/// <summary>K→H, on the pipe: from the next message on, the kernel sends on the shared-memory
/// ring at <see cref="KernelToHostOffset"/> of the file at <see cref="Path"/>, and the host is to
/// send on the one at <see cref="HostToKernelOffset"/> once it answered <see cref="RingReady"/>.
/// The pipe stays for wake-ups (<see cref="RingDoorbell"/>) and for noticing a peer's death.</summary>
[MessagePackObject]
public sealed record UseRing(
    [property: Key(0)] string Path,
    [property: Key(1)] long KernelToHostOffset,
    [property: Key(2)] long HostToKernelOffset,
    [property: Key(3)] long Capacity,
    [property: Key(4)] int SpinMicroseconds) : Message;

/// <summary>H→K, on the pipe: the host mapped the rings; everything it sends after this is on its ring.</summary>
[MessagePackObject]
public sealed record RingReady([property: Key(0)] long Capacity) : Message;

/// <summary>Both ways, on the pipe: the ring has frames for a consumer that said it sleeps.</summary>
[MessagePackObject]
public sealed record RingDoorbell([property: Key(0)] int Unused) : Message;

/// <summary>H→K, first frame: proves the host is the one the kernel spawned.</summary>
[MessagePackObject]
public sealed record Hello(
    [property: Key(0)] int ProtocolVersion,
    [property: Key(1)] byte[] Token,
    [property: Key(2)] int ProcessId) : Message;

/// <summary>K→H: the handshake succeeded.</summary>
[MessagePackObject]
public sealed record Welcome(
    [property: Key(0)] int ProtocolVersion,
    [property: Key(1)] string HostName) : Message;

/// <summary>K→H: the handshake failed; the kernel closes the pipe after it.</summary>
[MessagePackObject]
public sealed record Refused([property: Key(0)] string Reason) : Message;

/// <summary>K→H: load a driver assembly into its own load context and run DriverEntry, behind the
/// fault shim when there is a fault plan or the driver is <see cref="Injectable"/> (faults may be
/// armed later, with <see cref="ArmFault"/>).</summary>
[MessagePackObject]
public sealed record LoadDriver(
    [property: Key(0)] int DriverId,
    [property: Key(1)] string Name,
    [property: Key(2)] string AssemblyPath,
    [property: Key(3)] string? TypeName,
    [property: Key(4)] Dictionary<string, string> Parameters,
    [property: Key(5)] FaultSpec[]? Faults = null,
    [property: Key(6)] bool Injectable = false) : Message;

/// <summary>K→H, to a warm host waiting in the pool: load a driver's assembly ahead of time and
/// compile its code, without running any of it, so that a restart of that driver in this host
/// skips the loading. A later <see cref="LoadDriver"/> of the same name, assembly and type uses
/// it; the host drops the others it prepared.</summary>
[MessagePackObject]
public sealed record PrepareDriver(
    [property: Key(0)] string Name,
    [property: Key(1)] string AssemblyPath,
    [property: Key(2)] string? TypeName) : Message;

/// <summary>K→H: arm a fault in a running driver loaded <see cref="LoadDriver.Injectable"/>
/// (<c>drviso inject</c>). A "requests" trigger counts from now.</summary>
[MessagePackObject]
public sealed record ArmFault(
    [property: Key(0)] int DriverId,
    [property: Key(1)] FaultSpec Fault) : Message;

/// <summary>One fault the host's fault shim injects into a driver (fault-injection campaigns):
/// what, when (<see cref="Trigger"/>: <c>load</c>, <c>requests</c> after Value requests,
/// <c>time</c> after Value ms, <c>probability</c> Value per request), whether it fires again
/// after it fired once, its random seed and its parameters. <see cref="Index"/> names it in
/// <see cref="FaultInjected"/>.</summary>
[MessagePackObject]
public sealed record FaultSpec(
    [property: Key(0)] int Index,
    [property: Key(1)] string Fault,
    [property: Key(2)] string Trigger,
    [property: Key(3)] double Value,
    [property: Key(4)] bool Repeat,
    [property: Key(5)] int Seed,
    [property: Key(6)] Dictionary<string, string> Parameters);

/// <summary>H→K: the fault shim is about to inject fault <see cref="Index"/> of a driver's plan
/// (sent, and written to the pipe, before the fault acts).</summary>
[MessagePackObject]
public sealed record FaultInjected(
    [property: Key(0)] int DriverId,
    [property: Key(1)] int Index,
    [property: Key(2)] string Fault,
    [property: Key(3)] string Detail) : Message;

/// <summary>H→K: the outcome of <see cref="LoadDriver"/>.</summary>
[MessagePackObject]
public sealed record DriverLoaded(
    [property: Key(0)] int DriverId,
    [property: Key(1)] NtStatus Status,
    [property: Key(2)] string? Detail) : Message;

/// <summary>K→H: create a device object for a loaded driver and call its AddDevice.</summary>
[MessagePackObject]
public sealed record AddDevice(
    [property: Key(0)] int DriverId,
    [property: Key(1)] int DeviceId,
    [property: Key(2)] string Name,
    [property: Key(3)] DeviceType DeviceType,
    [property: Key(4)] bool HasLowerDevice,
    [property: Key(5)] Dictionary<string, string> Parameters,
    [property: Key(6)] HardwareBinding? Hardware = null) : Message;

/// <summary>In <see cref="AddDevice"/>: the hardware behind the device and the DMA window the
/// driver may use (a range of the shared physical-memory file, and its device address).</summary>
[MessagePackObject]
public sealed record HardwareBinding(
    [property: Key(0)] string Kind,
    [property: Key(1)] string RequesterId,
    [property: Key(2)] Dictionary<string, string> Properties,
    [property: Key(3)] string MemoryPath,
    [property: Key(4)] long PhysicalAddress,
    [property: Key(5)] int WindowBytes,
    [property: Key(6)] ulong DeviceAddress);

/// <summary>H→K: the outcome of <see cref="AddDevice"/>.</summary>
[MessagePackObject]
public sealed record DeviceAdded(
    [property: Key(0)] int DeviceId,
    [property: Key(1)] NtStatus Status,
    [property: Key(2)] string? Detail) : Message;

/// <summary>K→H: an IRP for one layer of a device stack. <see cref="Input"/> is the system buffer's
/// input part; the host allocates <see cref="OutputLength"/> bytes for results. <see cref="TraceParent"/>
/// is the IRP's W3C trace context (<c>00-trace-span-flags</c>) while the kernel traces, else nil:
/// the host then reports its stay as a <see cref="HostSpan"/>.</summary>
[MessagePackObject]
public sealed record Dispatch(
    [property: Key(0)] long IrpId,
    [property: Key(1)] int DeviceId,
    [property: Key(2)] MajorFunction MajorFunction,
    [property: Key(3)] byte MinorFunction,
    [property: Key(4)] long FileId,
    [property: Key(5)] long Offset,
    [property: Key(6)] int Length,
    [property: Key(7)] uint IoControlCode,
    [property: Key(8)] ReadOnlyMemory<byte> Input,
    [property: Key(9)] int OutputLength,
    [property: Key(10)] string? TraceParent = null) : Message;

/// <summary>H→K: the layer (<see cref="DeviceId"/>) that owns the IRP completes it. <see cref="Data"/> is the output it
/// produced (Read and control requests), never longer than the request's output buffer.</summary>
[MessagePackObject]
public sealed record Complete(
    [property: Key(0)] long IrpId,
    [property: Key(1)] int DeviceId,
    [property: Key(2)] NtStatus Status,
    [property: Key(3)] long Information,
    [property: Key(4)] ReadOnlyMemory<byte> Data) : Message;

/// <summary>H→K: the layer that owns the IRP passes it to the device below (IoCallDriver), with
/// the parameters as it left them.</summary>
[MessagePackObject]
public sealed record PassDown(
    [property: Key(0)] long IrpId,
    [property: Key(1)] int DeviceId,
    [property: Key(2)] bool WantsCompletion,
    [property: Key(3)] long Offset,
    [property: Key(4)] int Length,
    [property: Key(5)] ReadOnlyMemory<byte> Input) : Message;

/// <summary>K→H: the lower layer completed an IRP this layer passed down with a completion
/// routine; the IRP belongs to this layer again. <see cref="TraceParent"/> as in <see cref="Dispatch"/>.</summary>
[MessagePackObject]
public sealed record LowerCompleted(
    [property: Key(0)] long IrpId,
    [property: Key(1)] int DeviceId,
    [property: Key(2)] NtStatus Status,
    [property: Key(3)] long Information,
    [property: Key(4)] ReadOnlyMemory<byte> Data,
    [property: Key(5)] string? TraceParent = null) : Message;

/// <summary>H→K, only for a traced IRP and before the Complete or PassDown that ends the stay:
/// one stay of the IRP in a layer of this host, timed by the host (monotonic clock ticks, the
/// clock every process of the machine shares). <see cref="SpanId"/> is the host's span, a child
/// of the trace context the kernel sent; <see cref="RoutineStart"/> to <see cref="RoutineEnd"/> is
/// the driver's routine on its thread (zero if none ran); <see cref="Ended"/> says how the stay
/// ended.</summary>
[MessagePackObject]
public sealed record HostSpan(
    [property: Key(0)] long IrpId,
    [property: Key(1)] int DeviceId,
    [property: Key(2)] string Name,
    [property: Key(3)] string SpanId,
    [property: Key(4)] long Received,
    [property: Key(5)] long RoutineStart,
    [property: Key(6)] long RoutineEnd,
    [property: Key(7)] long Ended,
    [property: Key(8)] string Outcome) : Message;

/// <summary>K→H: cancel an IRP this host owns (its cancel routine runs if it set one).</summary>
[MessagePackObject]
public sealed record Cancel(
    [property: Key(0)] long IrpId,
    [property: Key(1)] int DeviceId) : Message;

/// <summary>K→H: heartbeat.</summary>
[MessagePackObject]
public sealed record Ping([property: Key(0)] long Sequence) : Message;

/// <summary>H→K: heartbeat answer, with the host's working set and the bytes its runtime has
/// allocated since it started (for measuring what a request costs the host).</summary>
[MessagePackObject]
public sealed record Pong(
    [property: Key(0)] long Sequence,
    [property: Key(1)] long WorkingSetBytes,
    [property: Key(2)] long AllocatedBytes) : Message;

/// <summary>H→K: a log line from a driver or the host.</summary>
[MessagePackObject]
public sealed record Log(
    [property: Key(0)] int DriverId,
    [property: Key(1)] int Level,
    [property: Key(2)] string Message) : Message;

/// <summary>K→H: unload every driver and exit.</summary>
[MessagePackObject]
public sealed record Shutdown([property: Key(0)] string Reason) : Message;

/// <summary>H→K: map pages of a device's DMA window for the device (its IOMMU domain).</summary>
[MessagePackObject]
public sealed record DmaMap(
    [property: Key(0)] int DeviceId,
    [property: Key(1)] int FirstPage,
    [property: Key(2)] int Pages,
    [property: Key(3)] DmaAccess Access) : Message;

/// <summary>H→K: unmap pages of a device's DMA window.</summary>
[MessagePackObject]
public sealed record DmaUnmap(
    [property: Key(0)] int DeviceId,
    [property: Key(1)] int FirstPage,
    [property: Key(2)] int Pages) : Message;

/// <summary>H→K: a driver writes a register of its device (a doorbell).</summary>
[MessagePackObject]
public sealed record RegisterWrite(
    [property: Key(0)] int DeviceId,
    [property: Key(1)] int Register,
    [property: Key(2)] ulong Value) : Message;

/// <summary>K→H: a device interrupted.</summary>
[MessagePackObject]
public sealed record Interrupt(
    [property: Key(0)] int DeviceId,
    [property: Key(1)] int Vector) : Message;
