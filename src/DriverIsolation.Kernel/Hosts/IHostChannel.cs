namespace DriverIsolation.Kernel;

/// <summary>
/// The kernel's side of a place where drivers run: a drvhost process behind a pipe
/// (<see cref="ProcessHostChannel"/>) or the kernel itself (<see cref="InKernelHostChannel"/>).
/// Messages from the host come back through the <see cref="IoManager"/>.
/// </summary>
internal interface IHostChannel : IAsyncDisposable
{
    string Name { get; }

    IsolationModel Isolation { get; }

    /// <summary>The OS process the drivers run in (the kernel's own for in-kernel).</summary>
    int ProcessId { get; }

    bool IsAlive { get; }

    Task<(NtStatus Status, string? Detail)> LoadDriverAsync(KernelDriver driver, string assemblyPath, CancellationToken cancellationToken);

    Task<(NtStatus Status, string? Detail)> AddDeviceAsync(KernelDriver driver, DeviceLayer layer, KernelDevice device, bool hasLowerDevice,
        IReadOnlyDictionary<string, string> parameters, Protocol.HardwareBinding? hardware, CancellationToken cancellationToken);

    /// <summary>A device bound to a driver here interrupted.</summary>
    void Interrupt(int deviceId, int vector);

    void Dispatch(KernelIrp irp, DeviceLayer layer);

    void Cancel(long irpId, DeviceLayer layer);

    void LowerCompleted(KernelIrp irp, DeviceLayer layer, NtStatus status, long information, ReadOnlyMemory<byte> data);

    /// <summary>Ends the host now (kill -9 for a process); its IRPs complete through the exit path.</summary>
    void Kill(string reason);

    /// <summary>Arms a fault in a running driver of this host (it was loaded injectable).</summary>
    void ArmFault(KernelDriver driver, Protocol.FaultSpec fault);

    /// <summary>The kernel refused a message from this host (counted against its refusal limit).</summary>
    void CountRefusal();
}
