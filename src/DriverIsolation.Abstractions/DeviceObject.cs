using Microsoft.Extensions.Logging;

namespace DriverIsolation;

/// <summary>A device as its driver sees it: name, type, the driver's own context
/// (<see cref="Extension"/>), the manifest's parameters, and the way down the device stack.</summary>
public sealed class DeviceObject
{
    private readonly IDeviceStackPort _port;

    internal DeviceObject(IDeviceStackPort port, int id, string name, DeviceType deviceType, DriverObject driver,
        bool hasLowerDevice, IReadOnlyDictionary<string, string> parameters)
    {
        _port = port;
        Id = id;
        Name = name;
        DeviceType = deviceType;
        Driver = driver;
        HasLowerDevice = hasLowerDevice;
        Parameters = parameters;
    }

    internal int Id { get; }

    public string Name { get; }

    public DeviceType DeviceType { get; }

    public DriverObject Driver { get; }

    /// <summary>True for a filter device: there is a device below it to pass IRPs to.</summary>
    public bool HasLowerDevice { get; }

    public IReadOnlyDictionary<string, string> Parameters { get; }

    /// <summary>The hardware this device drives (DMA, registers, interrupts); null for a device
    /// with none (a software device or a filter).</summary>
    public Hardware.IDeviceHardware? Hardware { get; internal set; }

    public ILogger Logger => Driver.Logger;

    /// <summary>The driver's per-device state (the device extension).</summary>
    public object? Extension { get; set; }

    public T GetExtension<T>() where T : class =>
        Extension as T ?? throw new InvalidOperationException($"Device {Name} has no extension of type {typeof(T).Name}.");

    /// <summary>Passes the IRP to the next lower device (IoCallDriver), with its current
    /// <see cref="Irp.Offset"/>, <see cref="Irp.Length"/> and <see cref="Irp.InputBuffer"/>.
    /// With a completion routine the IRP comes back to this layer when the lower one completes it;
    /// without one, the lower completion goes straight to the caller. Returns Pending.</summary>
    public NtStatus CallLowerDriver(Irp irp, IoCompletionRoutine? completionRoutine = null)
    {
        ArgumentNullException.ThrowIfNull(irp);
        if (!HasLowerDevice)
        {
            throw new InvalidOperationException($"Device {Name} has no lower device to pass IRPs to.");
        }

        irp.SetCompletionRoutine(this, completionRoutine);
        _port.PassDown(this, irp, completionRoutine is not null);
        return NtStatus.Pending;
    }
}

/// <summary>What the driver runtime does for the driver-facing objects: pass down and complete.</summary>
internal interface IDeviceStackPort
{
    void PassDown(DeviceObject device, Irp irp, bool wantsCompletion);

    void Complete(Irp irp, NtStatus status, long information);
}
