using DriverIsolation.DriverHost;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace DriverIsolation.Tests;

/// <summary>A warm host loads drivers ahead of time (PrepareDriver): the load of a prepared
/// driver uses it and says so, any other load drops what was prepared, and preparing runs none of
/// the driver's code.</summary>
public sealed class PrepareDriverTests
{
    private static readonly string NullAssembly = ManifestLoader.ResolveAssemblyPath(TestManifests.Sample("Null"));

    [Fact]
    public void LoadOfThePreparedDriver_UsesItAndSaysSo_AndTheDriverWorks()
    {
        var link = new RecordingLink();
        var runtime = new DriverRuntime(link, (_, _) => NullLogger.Instance);

        Assert.Null(runtime.PrepareDriver("Null", NullAssembly, null));
        Assert.Equal(1, runtime.PreparedDrivers);
        Assert.Empty(link.Completions);

        var loaded = runtime.LoadDriver(1, "Null", NullAssembly, null, new Dictionary<string, string>());
        Assert.Equal((NtStatus.Success, DriverRuntime.LoadedAhead), loaded);
        Assert.Equal((0, 1), (runtime.PreparedDrivers, runtime.LoadsFromPrepared));

        Assert.Equal(NtStatus.Success, runtime.AddDevice(1, 1, @"\Device\Null", DeviceType.Null, false, new Dictionary<string, string>()).Status);
        runtime.Dispatch(5, 1, MajorFunction.Read, 0, 1, 0, 8, 0, Memory<byte>.Empty, new byte[8]);
        Assert.Equal([(5L, NtStatus.Success, 8L)], link.Completions);
        runtime.UnloadAll();
    }

    [Fact]
    public void LoadOfAnotherDriver_OrFromAnotherAssembly_DropsWhatWasPrepared()
    {
        var runtime = new DriverRuntime(new RecordingLink(), (_, _) => NullLogger.Instance);
        Assert.Null(runtime.PrepareDriver("Null", NullAssembly, null));
        Assert.Null(runtime.PrepareDriver("Other", NullAssembly, null));

        // Same name, another type name: not what was prepared.
        var loaded = runtime.LoadDriver(1, "Null", NullAssembly, "DriverIsolation.Drivers.Null.NullDriver", new Dictionary<string, string>());

        Assert.Equal((NtStatus.Success, (string?)null), loaded);
        Assert.Equal((0, 0), (runtime.PreparedDrivers, runtime.LoadsFromPrepared));
        runtime.UnloadAll();
    }

    [Fact]
    public void Prepare_ANameTwiceOrAMissingAssembly_IsRefusedWithTheReason()
    {
        var runtime = new DriverRuntime(new RecordingLink(), (_, _) => NullLogger.Instance);
        Assert.Null(runtime.PrepareDriver("Null", NullAssembly, null));

        Assert.Equal("Null is prepared already", runtime.PrepareDriver("Null", NullAssembly, null));
        Assert.Equal("driver assembly not found: /nonexistent/x.dll", runtime.PrepareDriver("X", "/nonexistent/x.dll", null));
        Assert.Equal("cannot prepare Y: type No.Such not found in DriverIsolation.Drivers.Null", runtime.PrepareDriver("Y", NullAssembly, "No.Such"));
        Assert.Equal(1, runtime.PreparedDrivers);
    }

    private sealed class RecordingLink : IKernelLink
    {
        public List<(long IrpId, NtStatus Status, long Information)> Completions { get; } = [];

        public void Complete(long irpId, int deviceId, NtStatus status, long information, ReadOnlyMemory<byte> data) => Completions.Add((irpId, status, information));

        public void PassDown(long irpId, int deviceId, bool wantsCompletion, long offset, int length, ReadOnlyMemory<byte> input)
        {
        }

        public void Log(int driverId, LogLevel level, string message)
        {
        }

        public void DmaMap(int deviceId, int firstPage, int pages, DmaAccess access)
        {
        }

        public void DmaUnmap(int deviceId, int firstPage, int pages)
        {
        }

        public void WriteRegister(int deviceId, int registerIndex, ulong value)
        {
        }

        public void FaultInjected(int driverId, int index, string fault, string detail)
        {
        }

        public bool SendMalformedFrame(ReadOnlySpan<byte> bytes) => false;

        public bool WriteKernelMemory(ulong physicalAddress, ulong value) => false;
    }
}
