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

        // A key that does not parse fails the load: silently falling back to the default would
        // write data under a key nobody configured.
        if (!TryParseKey(driver.Parameters, out var key))
        {
            return NtStatus.InvalidParameter;
        }

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

    /// <summary>Reads <c>key</c>: decimal ("90") or hexadecimal ("0x5A"); absent means the default.</summary>
    private static bool TryParseKey(IReadOnlyDictionary<string, string> parameters, out byte key)
    {
        key = DefaultKey;
        if (!parameters.TryGetValue("key", out var text))
        {
            return true;
        }

        return text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? byte.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out key)
            : byte.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out key);
    }
}
