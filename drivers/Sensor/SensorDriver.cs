using System.Globalization;

namespace DriverIsolation.Drivers.Sensor;

/// <summary>
/// A security sensor, as endpoint-protection products install one: a boot-start filter above the
/// disk and the NIC that looks at every request on its way down. What it looks for comes from a
/// content update (its "channel file"), read at load: a template of fields its interpreter walks.
/// The interpreter expects 21 fields. A channel file with 20 makes it read one past the end, at
/// every load, which is how one malformed content update in July 2024 stopped ~8.5 million
/// Windows machines from booting. Here it crashes the sensor's host instead, unless the sensor
/// runs in-kernel.
/// </summary>
public sealed class SensorDriver : IDriver
{
    /// <summary>The fields the interpreter reads.</summary>
    public const int ExpectedFields = 21;

    /// <summary>The built-in content: 21 well-formed fields.</summary>
    public static readonly string DefaultChannelFile = string.Join(',', Enumerable.Range(1, ExpectedFields).Select(i => $"rule{i}"));

    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        var content = driver.Parameters.TryGetValue("channelFile", out var path) ? File.ReadAllText(path) : DefaultChannelFile;
        var rules = Interpret(content.Trim().Split(','));

        driver.AddDevice = (_, device) =>
        {
            device.Extension = new SensorDevice(rules);
            return NtStatus.Success;
        };

        // Look at everything, stop nothing: each request is counted and passed down.
        foreach (var major in new[] { MajorFunction.Read, MajorFunction.Write, MajorFunction.DeviceControl, MajorFunction.FlushBuffers })
        {
            driver[major] = Inspect;
        }

        return NtStatus.Success;
    }

    /// <summary>Walks the template: field i is rule i. No bounds check, as in the original.</summary>
    private static string[] Interpret(string[] fields)
    {
        var rules = new string[ExpectedFields];
        for (var i = 0; i < ExpectedFields; i++)
        {
            rules[i] = fields[i]; // a 20-field file: IndexOutOfRangeException at i = 20
        }

        return rules;
    }

    private static NtStatus Inspect(DeviceObject device, Irp irp)
    {
        var sensor = (SensorDevice)device.Extension!;
        Interlocked.Increment(ref sensor.Inspected);
        return device.CallLowerDriver(irp);
    }

    private sealed class SensorDevice(string[] rules)
    {
        public long Inspected;

        public string[] Rules { get; } = rules;

        public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Rules.Length} rules, {Inspected} requests inspected");
    }
}
