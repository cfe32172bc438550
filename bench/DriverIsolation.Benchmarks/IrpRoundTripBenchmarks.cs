using BenchmarkDotNet.Attributes;
using DriverIsolation.Kernel;

namespace DriverIsolation.Benchmarks;

/// <summary>
/// One 512-byte Read of the Null driver through the client API, awaited before the next, in each
/// isolation model. In-kernel is the baseline: the difference is the cost of the process
/// boundary (two pipe crossings and two wake-ups per request).
/// </summary>
[MemoryDiagnoser]
public class IrpRoundTripBenchmarks
{
    private readonly byte[] _buffer = new byte[512];
    private Microkernel _kernel = null!;
    private DeviceHandle _null = null!;

    [Params(IsolationModel.InKernel, IsolationModel.SharedHost, IsolationModel.Process)]
    public IsolationModel Isolation { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _kernel = new Microkernel();
        var manifest = ManifestLoader.LoadFile(Path.Combine(AppContext.BaseDirectory, "manifests", "Null.json"));
        _kernel.StartAsync([manifest], Isolation).GetAwaiter().GetResult();
        _null = _kernel.OpenAsync(@"\Device\Null").GetAwaiter().GetResult();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _null.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _kernel.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    [Benchmark]
    public async Task<IoResult> Read512() => await _null.ReadAsync(_buffer).ConfigureAwait(false);
}
