using System.Globalization;
using DriverIsolation.Hardware;

namespace DriverIsolation.Drivers.VNic;

/// <summary>
/// The driver of the simulated NIC. A Write sends its buffer as one frame; a Read returns the
/// next frame received, waiting (cancelable) until one arrives. Frames move by DMA only: transmit
/// buffers are mapped for the device (read access) while they are on the ring, receive buffers
/// (write access) while they are posted.
/// </summary>
public sealed class VNicDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver.AddDevice = AddDevice;
        driver[MajorFunction.Write] = (device, irp) => device.GetExtension<VNicController>().Send(irp);
        driver[MajorFunction.Read] = (device, irp) => device.GetExtension<VNicController>().Receive(irp);
        driver.Unload = _ => { };
        return NtStatus.Success;
    }

    private static NtStatus AddDevice(DriverObject driver, DeviceObject device)
    {
        if (device.Hardware is not { Kind: "nic" } hardware)
        {
            return NtStatus.DeviceNotReady; // No NIC behind it: nothing to drive.
        }

        var ringText = device.Parameters.GetValueOrDefault("ringSize", "32");
        if (!int.TryParse(ringText, NumberStyles.Integer, CultureInfo.InvariantCulture, out var ringSize) || ringSize is < 2 or > NicSpec.MaxRingSize)
        {
            return NtStatus.InvalidParameter;
        }

        try
        {
            device.Extension = new VNicController(hardware, ringSize);
        }
        catch (InsufficientMemoryException)
        {
            return NtStatus.InsufficientResources; // The DMA window is too small for the rings asked for.
        }

        return NtStatus.Success;
    }
}
