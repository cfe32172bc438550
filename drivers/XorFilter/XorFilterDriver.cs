using System.Globalization;

namespace DriverIsolation.Drivers.XorFilter;

/// <summary>
/// The XorFilter driver: a filter above a disk that "encrypts" every sector with a one-byte XOR
/// key, so the media below holds only cipher text. It shows the two ways down a device stack:
/// writes are changed in place and passed down with no completion routine (the filter has nothing
/// left to do); reads are passed down with a completion routine that decrypts the lower driver's
/// data on its way back up. Everything else passes through untouched, except the filter's own
/// statistics control code.
/// </summary>
public sealed class XorFilterDriver : IDriver
{
    private const byte DefaultKey = 0x5A;

    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        var key = driver.Parameters.TryGetValue("key", out var text) && byte.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var parsed)
            ? parsed
            : DefaultKey;
        driver.AddDevice = (_, device) =>
        {
            device.Extension = new FilterDevice(key);
            return NtStatus.Success;
        };
        driver[MajorFunction.Write] = CipherDispatch.Write;
        driver[MajorFunction.Read] = CipherDispatch.Read;
        driver[MajorFunction.DeviceControl] = CipherDispatch.DeviceControl;
        return NtStatus.Success;
    }
}
