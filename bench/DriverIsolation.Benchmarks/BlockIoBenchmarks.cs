using BenchmarkDotNet.Attributes;
using DriverIsolation.Benchmarks.Infrastructure;
using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Benchmarks;

/// <summary>
/// One 4 KiB Read of the VBlock driver (its own process, the simulated block device with
/// submission/completion queues in DMA memory and a doorbell) through the client API, awaited
/// before the next, with the IOMMU off (the baseline: the device addresses physical memory
/// directly), strict (every unmap invalidates the IOTLB at once) and lazy (invalidations are
/// batched). The driver maps and unmaps its data buffer for every command, so the modes differ
/// in what each request pays for mapping, translating and invalidating. Reads walk the first
/// 4 MiB of the disk in 4 KiB steps.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class BlockIoBenchmarks
{
    private const int BlockSize = 4096;
    private const int Blocks = 1024;
    private readonly byte[] _buffer = new byte[BlockSize];
    private KernelUnderTest? _kernel;
    private int _next;

    [GlobalSetup(Target = nameof(IommuOff))]
    public Task SetupOff() => BootAsync(IommuMode.Off);

    [GlobalSetup(Target = nameof(IommuStrict))]
    public Task SetupStrict() => BootAsync(IommuMode.Strict);

    [GlobalSetup(Target = nameof(IommuLazy))]
    public Task SetupLazy() => BootAsync(IommuMode.Lazy);

    [GlobalCleanup]
    public async Task Cleanup()
    {
        if (_kernel is not null)
        {
            var faults = _kernel.Kernel.GetIommu()?.FaultCount ?? 0;
            await _kernel.DisposeAsync();
            _kernel = null;
            if (faults != 0)
            {
                throw new InvalidOperationException($"{faults} IOMMU faults during the run: the figures are not of healthy I/O");
            }
        }
    }

    [Benchmark(Baseline = true, Description = "VBlock 4 KiB read, IOMMU off")]
    public ValueTask<IoResult> IommuOff() => ReadNextAsync();

    [Benchmark(Description = "VBlock 4 KiB read, IOMMU strict")]
    public ValueTask<IoResult> IommuStrict() => ReadNextAsync();

    [Benchmark(Description = "VBlock 4 KiB read, IOMMU lazy")]
    public ValueTask<IoResult> IommuLazy() => ReadNextAsync();

    private ValueTask<IoResult> ReadNextAsync()
    {
        var offset = (long)_next * BlockSize;
        _next = (_next + 1) % Blocks;
        return _kernel!.Device.ReadAsync(_buffer, offset);
    }

    private async Task BootAsync(IommuMode mode)
    {
        _kernel = await KernelUnderTest.StartAsync(new KernelOptions { WarmPoolSize = 0, IommuMode = mode },
            KernelUnderTest.Manifest("VBlock"), IsolationModel.Process, @"\??\VBlock0");
        for (var i = 0; i < Blocks; i++)
        {
            var result = await ReadNextAsync();
            if (result != new IoResult(NtStatus.Success, BlockSize))
            {
                throw new InvalidOperationException($"a 4 KiB Read returned {result}");
            }
        }

        if (_kernel.Kernel.GetIommu() is not { } iommu || iommu.Mode != mode)
        {
            throw new InvalidOperationException($"the machine's IOMMU is not in {mode} mode");
        }
    }
}
