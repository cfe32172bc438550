using System.Buffers;
using System.Runtime.InteropServices;
using DriverIsolation.DriverHost;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.Kernel;

/// <summary>
/// In-kernel isolation: the drivers' routines are called directly on the kernel's threads, with no
/// pipe and no copy beyond the system buffer. A driver that throws takes the kernel down
/// (a bug check): that is what in-kernel means.
/// </summary>
internal sealed class InKernelHostChannel : IHostChannel, IKernelLink
{
    private readonly IoManager _io;
    private readonly DriverRuntime _runtime;
    private readonly ILogger _driverLogger;

    public InKernelHostChannel(IoManager io, ILoggerFactory loggerFactory)
    {
        _io = io;
        _driverLogger = loggerFactory.CreateLogger("Driver");
        _runtime = new DriverRuntime(this, (_, name) => loggerFactory.CreateLogger($"Driver.{name}"));
    }

    public string Name => "kernel";

    public IsolationModel Isolation => IsolationModel.InKernel;

    public int ProcessId => Environment.ProcessId;

    public bool IsAlive => _io.BugCheckReason is null;

    public Task<(NtStatus Status, string? Detail)> LoadDriverAsync(KernelDriver driver, string assemblyPath, CancellationToken cancellationToken) =>
        Task.FromResult(Guard(driver.Name, "DriverEntry", () =>
            _runtime.LoadDriver(driver.Id, driver.Name, assemblyPath, driver.Manifest.Type, driver.Manifest.Parameters, driver.FaultsForLoad(), driver.Injectable)));

    public Task<(NtStatus Status, string? Detail)> AddDeviceAsync(KernelDriver driver, DeviceLayer layer, KernelDevice device, bool hasLowerDevice,
        IReadOnlyDictionary<string, string> parameters, Protocol.HardwareBinding? hardware, CancellationToken cancellationToken) =>
        Task.FromResult(Guard(driver.Name, "AddDevice", () =>
            _runtime.AddDevice(driver.Id, layer.DeviceId, device.Name, device.DeviceType, hasLowerDevice, parameters, hardware)));

    /// <summary>Interrupts run on a pool thread, as a DPC would: never inside the register write
    /// that caused them.</summary>
    public void Interrupt(int deviceId, int vector) =>
        ThreadPool.UnsafeQueueUserWorkItem(
            static s => s.Self.Guard("interrupt", "interrupt service routine", () =>
            {
                s.Self._runtime.Interrupt(s.DeviceId, s.Vector);
                return (NtStatus.Success, null);
            }),
            (Self: this, DeviceId: deviceId, Vector: vector), preferLocal: false);

    /// <summary>Calls the layer's dispatch routine on this thread. The output buffer is the IRP's
    /// system buffer, one for every in-kernel layer of the stack (as with buffered I/O), taken
    /// from a pool and zeroed, and given back when the driver completes the IRP.</summary>
    public void Dispatch(KernelIrp irp, DeviceLayer layer)
    {
        var output = Memory<byte>.Empty;
        if (irp.OutputLength > 0)
        {
            if (irp.SystemOutput is null)
            {
                irp.SystemOutput = ArrayPool<byte>.Shared.Rent(irp.OutputLength);
                irp.SystemOutput.AsSpan(0, irp.OutputLength).Clear();
            }

            output = irp.SystemOutput.AsMemory(0, irp.OutputLength);
        }

        try
        {
            _runtime.Dispatch(irp.Id, layer.DeviceId, irp.MajorFunction, irp.MinorFunction, irp.File.Id, irp.Offset, irp.Length,
                irp.IoControlCode, MemoryMarshal.AsMemory(irp.Input), output);
        }
#pragma warning disable CA1031 // Any exception from in-kernel driver code is a bug check, whatever its type.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Faulted(layer.Driver.Name, $"dispatch of {irp.MajorFunction}", ex);
        }
    }

    public void ArmFault(KernelDriver driver, Protocol.FaultSpec fault)
    {
        if (_runtime.ArmFault(driver.Id, fault) is { } notArmed)
        {
            throw new InvalidOperationException($"fault {fault.Fault} not armed: {notArmed}");
        }
    }

    public void Cancel(long irpId, DeviceLayer layer)
    {
        try
        {
            _runtime.Cancel(irpId, layer.DeviceId);
        }
#pragma warning disable CA1031 // Any exception from in-kernel driver code is a bug check, whatever its type.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Faulted(layer.Driver.Name, "cancel routine", ex);
        }
    }

    public void LowerCompleted(KernelIrp irp, DeviceLayer layer, NtStatus status, long information, ReadOnlyMemory<byte> data)
    {
        try
        {
            _runtime.LowerCompleted(irp.Id, layer.DeviceId, status, information, data.Span);
        }
#pragma warning disable CA1031 // Any exception from in-kernel driver code is a bug check, whatever its type.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Faulted(layer.Driver.Name, "completion routine", ex);
        }
    }

    /// <summary>In-kernel drivers are the kernel: there is nothing to kill for misbehaving.</summary>
    public void CountRefusal()
    {
    }

    public void Kill(string reason) => _io.BugCheck($"the kernel itself was asked to stop: {reason}");

    public ValueTask DisposeAsync()
    {
        _runtime.UnloadAll();
        return ValueTask.CompletedTask;
    }

    void IKernelLink.Complete(long irpId, int deviceId, NtStatus status, long information, ReadOnlyMemory<byte> data) =>
        _io.OnComplete(this, irpId, deviceId, status, information, data);

    void IKernelLink.PassDown(long irpId, int deviceId, bool wantsCompletion, long offset, int length, ReadOnlyMemory<byte> input) =>
        _io.OnPassDown(this, irpId, deviceId, wantsCompletion, offset, length, input);

    void IKernelLink.DmaMap(int deviceId, int firstPage, int pages, DmaAccess access) =>
        HardwareRequest(_io.Machine?.Map(this, deviceId, firstPage, pages, access));

    void IKernelLink.DmaUnmap(int deviceId, int firstPage, int pages) =>
        HardwareRequest(_io.Machine?.Unmap(this, deviceId, firstPage, pages));

    void IKernelLink.FaultInjected(int driverId, int index, string fault, string detail) => _io.OnFaultInjected?.Invoke(driverId, index, fault, detail);

    /// <summary>In-kernel there is no pipe to send a malformed frame on.</summary>
    bool IKernelLink.SendMalformedFrame(ReadOnlySpan<byte> bytes) => false;

    /// <summary>In-kernel the kernel's memory is the driver's memory: the store lands, and
    /// nothing but the kernel's own integrity checks will notice.</summary>
    bool IKernelLink.WriteKernelMemory(ulong physicalAddress, ulong value)
    {
        if (_io.Machine is not { } machine || physicalAddress > int.MaxValue || !machine.Memory.Contains((long)physicalAddress, sizeof(ulong)))
        {
            return false;
        }

        machine.Memory.WriteUInt64((long)physicalAddress, value);
        return true;
    }

    void IKernelLink.WriteRegister(int deviceId, int registerIndex, ulong value) =>
        HardwareRequest(_io.Machine?.WriteRegister(this, deviceId, registerIndex, value));

    // An in-kernel driver that asks for what is not its own is a kernel bug.
    private void HardwareRequest(string? error)
    {
        if (error is not null)
        {
            _io.BugCheck($"an in-kernel driver made a bad DMA or register request: {error}");
        }
    }

    void IKernelLink.Log(int driverId, LogLevel level, string message) =>
        Log.DriverLogById(_driverLogger, level, driverId, message);

    /// <summary>Runs driver code; an exception escaping it is a kernel crash.</summary>
    private (NtStatus Status, string? Detail) Guard(string driver, string what, Func<(NtStatus, string?)> call)
    {
        try
        {
            return call();
        }
#pragma warning disable CA1031 // Any exception from in-kernel driver code is a bug check, whatever its type.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Faulted(driver, what, ex);
            return (NtStatus.SystemCrashed, ex.Message);
        }
    }

    private void Faulted(string driver, string what, Exception ex) =>
        _io.BugCheck($"{driver} faulted in its {what}: {ex.GetType().Name}: {ex.Message}");
}
