using System.Globalization;

namespace DriverIsolation.Drivers.RamDisk;

/// <summary>
/// The RamDisk driver: a block device backed by memory. DriverEntry fills the dispatch table;
/// AddDevice sizes the disk from the manifest's parameters; each request is checked for
/// alignment and range before it touches the media (<see cref="RamDiskDevice"/>).
/// </summary>
public sealed class RamDiskDriver : IDriver
{
    private const long DefaultSizeBytes = 1 << 20;
    private const int DefaultSectorSize = 512;

    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver.AddDevice = AddDevice;
        driver[MajorFunction.Read] = DiskDispatch.Read;
        driver[MajorFunction.Write] = DiskDispatch.Write;
        driver[MajorFunction.FlushBuffers] = DiskDispatch.Flush;
        driver[MajorFunction.DeviceControl] = DiskControl.DeviceControl;
        return NtStatus.Success;
    }

    private static NtStatus AddDevice(DriverObject driver, DeviceObject device)
    {
        if (!TryParameter(device, "sizeBytes", DefaultSizeBytes, out var size) ||
            !TryParameter(device, "sectorSize", DefaultSectorSize, out var sectorSize) ||
            sectorSize <= 0 || (sectorSize & (sectorSize - 1)) != 0 || size <= 0 || size % sectorSize != 0 || size > int.MaxValue)
        {
            return NtStatus.InvalidParameter;
        }

        device.Extension = new RamDiskDevice((int)sectorSize, size / sectorSize,
            device.Parameters.TryGetValue("backingFile", out var backingFile) ? backingFile : null);
        return NtStatus.Success;
    }

    private static bool TryParameter(DeviceObject device, string name, long fallback, out long value)
    {
        value = fallback;
        return !device.Parameters.TryGetValue(name, out var text) ||
            long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out value);
    }
}
