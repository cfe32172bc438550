namespace DriverIsolation;

/// <summary>Handles one major function for a device. Returns <see cref="NtStatus.Pending"/> after
/// <see cref="Irp.MarkPending"/> or <see cref="DeviceObject.CallLowerDriver"/>, otherwise the status
/// it completed the IRP with. A dispatch routine must complete, pass down, or mark pending.</summary>
public delegate NtStatus DispatchRoutine(DeviceObject device, Irp irp);

/// <summary>Initialises a device object the PnP manager created for this driver from its manifest
/// (for a filter, one attached above its target). A failure status removes the device.</summary>
public delegate NtStatus AddDeviceRoutine(DriverObject driver, DeviceObject device);

/// <summary>Runs when the lower driver completed an IRP this layer passed down. The IRP belongs to
/// this layer again: the routine (or code it starts) must complete it exactly once.</summary>
public delegate void IoCompletionRoutine(DeviceObject device, Irp irp, IoResult lowerResult);

/// <summary>Runs when the kernel cancels an IRP marked cancelable; it must complete the IRP
/// (usually with <see cref="NtStatus.Cancelled"/>).</summary>
public delegate void CancelRoutine(Irp irp);
