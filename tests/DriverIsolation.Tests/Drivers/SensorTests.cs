using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>The Sensor sample with a channel file of 20 fields: its own interpreter reads past
/// the end at every load; isolated, it crash-loops into quarantine and the kernel boots in safe
/// mode with the disk under it serving. With its built-in 21-field content it loads and passes
/// every request down.</summary>
[Collection("processes")]
public sealed class SensorTests : IDisposable
{
    private readonly string _channelFile = Path.Combine(Path.GetTempPath(), $"drviso-channel-{Guid.NewGuid():N}.txt");

    public void Dispose() => File.Delete(_channelFile);

    [Fact]
    public async Task TwentyFieldChannelFile_CrashLoopsIntoQuarantine_SafeMode_TheDiskServes()
    {
        await File.WriteAllTextAsync(_channelFile, string.Join(',', Enumerable.Range(1, 20).Select(i => $"rule{i}")));
        var sensor = TestManifests.Sample("Sensor") with
        {
            Parameters = new Dictionary<string, string> { ["channelFile"] = _channelFile },
            Recovery = TestManifests.Sample("Sensor").Recovery with { MaxFailures = 1, BackoffBase = TimeSpan.FromMilliseconds(1), BackoffMax = TimeSpan.FromMilliseconds(5) },
        };
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("VBlock"), TestManifests.Sample("VNic"), sensor], IsolationModel.Process).Bounded();

        Assert.Equal(DriverState.Quarantined, kernel.GetDrivers().Single(d => d.Name == "Sensor").State);
        Assert.StartsWith("Sensor is quarantined", kernel.SafeModeReason, StringComparison.Ordinal);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var block = Enumerable.Range(0, 4096).Select(i => (byte)i).ToArray();
        Assert.Equal(NtStatus.Success, (await disk.WriteAsync(block).Bounded()).Status);
        var back = new byte[4096];
        Assert.Equal(new IoResult(NtStatus.Success, 4096), await disk.ReadAsync(back).Bounded());
        Assert.Equal(block, back);
    }

    [Fact]
    public async Task BuiltInContent_Loads_AndTheDiskServesThroughTheSensor()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([TestManifests.Sample("VBlock"), TestManifests.Sample("VNic"), TestManifests.Sample("Sensor")], IsolationModel.Process).Bounded();

        Assert.Null(kernel.SafeModeReason);
        Assert.Equal(["Sensor", "VBlock"], kernel.GetDevice(@"\??\VBlock0")!.Stack.Select(l => l.Driver));
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var block = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(NtStatus.Success, (await disk.WriteAsync(block).Bounded()).Status);
        var back = new byte[4096];
        Assert.Equal(new IoResult(NtStatus.Success, 4096), await disk.ReadAsync(back).Bounded());
        Assert.Equal(block, back);
    }
}
