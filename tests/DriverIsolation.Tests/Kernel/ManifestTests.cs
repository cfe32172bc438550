using DriverIsolation.Kernel;
using Microsoft.Extensions.DependencyInjection;

namespace DriverIsolation.Tests;

public sealed class ManifestTests
{
    private const string Valid = """
        {
          "name": "RamDisk",
          "assembly": "DriverIsolation.Drivers.RamDisk.dll",
          "isolation": "shared-host",
          "hostGroup": "storage",
          "parameters": { "a": "x", "n": 5, "flag": true },
          "devices": [ { "name": "\\Device\\Disk7", "type": "disk", "links": ["\\??\\Disk7"], "parameters": { "sizeBytes": "4096" } } ],
          "limits": { "requestTimeoutMs": 1500, "memoryMb": 64, "critical": ["read", "deviceControl"] },
          "recovery": { "restart": true, "inFlight": "retry", "idempotent": ["read", "write"], "maxFailures": 3, "failureWindowMs": 10000,
                        "quietPeriodMs": 2000, "backoffBaseMs": 5, "backoffMaxMs": 500, "bootCritical": true }
        }
        """;

    [Fact]
    public void Parse_ValidManifest_ReadsEveryField()
    {
        var manifest = ManifestLoader.Parse(Valid, "test.json");

        Assert.Equal("RamDisk", manifest.Name);
        Assert.Equal(IsolationModel.SharedHost, manifest.Isolation);
        Assert.Equal("storage", manifest.HostGroup);
        Assert.Equal(new Dictionary<string, string> { ["a"] = "x", ["n"] = "5", ["flag"] = "true" }, manifest.Parameters);
        var device = Assert.Single(manifest.Devices);
        Assert.Equal(@"\Device\Disk7", device.Name);
        Assert.Equal(DeviceType.Disk, device.Type);
        Assert.Equal([@"\??\Disk7"], device.Links);
        Assert.Equal("4096", device.Parameters["sizeBytes"]);
        Assert.Equal(TimeSpan.FromMilliseconds(1500), manifest.Limits.RequestTimeout);
        Assert.Equal(64L * 1024 * 1024, manifest.Limits.MemoryBytes);
        Assert.Equal([MajorFunction.Read, MajorFunction.DeviceControl], manifest.Limits.Critical);
        Assert.Equal(new RecoveryPolicy
        {
            Restart = true,
            InFlight = InFlightPolicy.Retry,
            Idempotent = manifest.Recovery.Idempotent,
            MaxFailures = 3,
            FailureWindow = TimeSpan.FromSeconds(10),
            QuietPeriod = TimeSpan.FromSeconds(2),
            BackoffBase = TimeSpan.FromMilliseconds(5),
            BackoffMax = TimeSpan.FromMilliseconds(500),
            BootCritical = true,
        }, manifest.Recovery);
        Assert.Equal([MajorFunction.Read, MajorFunction.Write], manifest.Recovery.Idempotent);
        Assert.False(manifest.IsFilter);
    }

    [Fact]
    public void LoadFile_SampleManifests_AllParse()
    {
        var samples = TestManifests.Samples();

        Assert.Equal(["Null", "RamDisk", "Echo", "XorFilter"], samples.Select(m => m.Name));
        Assert.True(samples.Single(m => m.Name == "XorFilter").IsFilter);
        Assert.All(samples, m => Assert.Equal(IsolationModel.Process, m.Isolation));
    }

    [Theory]
    [InlineData("{ \"name\": ", "$", "not valid JSON")]
    [InlineData("[]", "$", "expected an object; got an array")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"isolaton\": \"process\" }", "$.isolaton", "unknown field; expected one of name, assembly")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"isolation\": \"sandbox\" }", "$.isolation", "expected one of \"in-kernel\", \"shared-host\", \"process\"; got \"sandbox\"")]
    [InlineData("{ \"name\": \"X\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ] }", "$.assembly", "required, and missing")]
    [InlineData("{ \"name\": \"X\", \"assembly\": 5, \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ] }", "$.assembly", "expected a non-empty string; got the number 5")]
    [InlineData("{ \"name\": \"bad name!\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ] }", "$.name", "expected letters, digits")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\" }", "$.devices", "has neither")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"attachTo\": [\"\\\\Device\\\\Y\"] }", "$.attachTo", "not both")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": {} }", "$.devices", "expected an array; got an object")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"Disk0\" } ] }", "$.devices[0].name", "expected a device name like")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\", \"type\": \"gpu\" } ] }", "$.devices[0].type", "got \"gpu\"")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\", \"links\": [\"NUL\"] } ] }", "$.devices[0].links[0]", "expected a namespace path")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"limits\": { \"requestTimeoutMs\": -1 } }", "$.limits.requestTimeoutMs", "expected a positive whole number; got the number -1")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"limits\": { \"cpuPercent\": 5 } }", "$.limits.cpuPercent", "unknown field")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"limits\": { \"critical\": [\"reed\"] } }", "$.limits.critical[0]", "expected one of create, cleanup, close, read")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"recovery\": { \"inFlight\": \"replay\" } }", "$.recovery.inFlight", "expected \"fail\" or \"retry\"; got \"replay\"")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"recovery\": { \"restart\": \"yes\" } }", "$.recovery.restart", "expected true or false; got the string \"yes\"")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"recovery\": { \"backoffBaseMs\": 100, \"backoffMaxMs\": 10 } }", "$.recovery.backoffMaxMs", "must be at least backoffBaseMs")]
    [InlineData("{ \"name\": \"X\", \"assembly\": \"x.dll\", \"devices\": [ { \"name\": \"\\\\Device\\\\X\" } ], \"parameters\": { \"k\": [1] } }", "$.parameters.k", "expected a string, number or boolean; got an array")]
    public void Parse_BadManifest_NamesTheFieldAndWhatWasExpected(string json, string field, string problem)
    {
        var error = Assert.Throws<ManifestException>(() => ManifestLoader.Parse(json, "bad.json"));

        Assert.Equal("bad.json", error.Source);
        Assert.Equal(field, error.Field);
        Assert.Contains(problem, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StartAsync_TwoDriversClaimTheSameDevice_ThrowsBeforeStartingAnything()
    {
        await using var kernel = new Microkernel();
        var null1 = TestManifests.Sample("Null");
        var null2 = null1 with { Name = "Null2" };

        var error = await Assert.ThrowsAsync<ManifestException>(() => kernel.StartAsync([null1, null2])).Bounded();

        Assert.Equal("$.devices[0].name", error.Field);
        Assert.Contains("already taken by driver Null", error.Problem, StringComparison.Ordinal);
        Assert.Empty(kernel.Events.Snapshot());
    }

    [Fact]
    public async Task StartAsync_FilterAboveAnUnknownDevice_ThrowsNamingTheTarget()
    {
        await using var kernel = new Microkernel();

        var error = await Assert.ThrowsAsync<ManifestException>(() => kernel.StartAsync([TestManifests.Sample("XorFilter")])).Bounded();

        Assert.Equal("$.attachTo[0]", error.Field);
        Assert.Contains(@"\Device\RamDisk0", error.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StartAsync_DriverAssemblyMissing_ThatDriverFailsAndTheOthersBoot()
    {
        await using var kernel = new Microkernel();
        var broken = TestManifests.Sample("Echo") with { Assembly = "NoSuchDriver.dll", Isolation = IsolationModel.InKernel };

        await kernel.StartAsync([broken, TestManifests.Sample("Null") with { Isolation = IsolationModel.InKernel }]).Bounded();

        var drivers = kernel.GetDrivers();
        Assert.Equal(DriverState.Failed, drivers.Single(d => d.Name == "Echo").State);
        Assert.Contains("driver assembly not found", drivers.Single(d => d.Name == "Echo").Failure, StringComparison.Ordinal);
        Assert.Equal(DriverState.Running, drivers.Single(d => d.Name == "Null").State);
        Assert.Null(kernel.GetDevice(@"\Device\Echo"));
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[1]).Bounded()).Status);
    }

    [Fact]
    public async Task AddDriverIsolationKernel_ResolvesAKernelWithTheRegisteredTimeProviderAndOptions()
    {
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        var services = new ServiceCollection()
            .AddSingleton<TimeProvider>(time)
            .AddLogging()
            .AddDriverIsolationKernel(o => o.DefaultRequestTimeout = TimeSpan.FromSeconds(5));
        await using var provider = services.BuildServiceProvider();
        var kernel = provider.GetRequiredService<Microkernel>();
        var echo = TestManifests.Sample("Echo") with { Isolation = IsolationModel.InKernel, Limits = new DriverLimits() };
        await kernel.StartAsync([echo]).Bounded();
        await using var handle = await kernel.OpenAsync(@"\Device\Echo").Bounded();

        var read = handle.ReadAsync(new byte[4]);
        time.Advance(TimeSpan.FromSeconds(4));
        Assert.False(read.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(1));

        Assert.Equal(NtStatus.IoTimeout, (await read.Bounded()).Status);
        Assert.Same(kernel, provider.GetRequiredService<Microkernel>());
        Assert.Equal(TimeSpan.FromSeconds(5), provider.GetRequiredService<KernelOptions>().DefaultRequestTimeout);
    }
}
