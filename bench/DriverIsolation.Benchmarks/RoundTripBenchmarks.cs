using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using DriverIsolation.Benchmarks.Infrastructure;
using DriverIsolation.Kernel;

namespace DriverIsolation.Benchmarks;

/// <summary>
/// One 512-byte Read, awaited before the next, along every path the kernel offers and the raw
/// transports under them, in one run so the ratios compare like with like. The baseline is the
/// raw named pipe: a two-process ping-pong with drvhost's echo mode, the same framing and message
/// sizes as an IRP to a host but no kernel and no IRP. Above it: the same echo over the
/// shared-memory rings, a plain in-process call (the floor), and the Null driver's Read through
/// the client API in-kernel, in a shared host, in its own process over the pipe and over the
/// ring transport. Each path boots only what it needs (targeted global setups).
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class RoundTripBenchmarks
{
    private const int Payload = 512;
    private readonly byte[] _buffer = new byte[Payload];
    private RawEcho? _echo;
    private KernelUnderTest? _kernel;

    [GlobalSetup(Target = nameof(RawPipe))]
    public async Task SetupRawPipe() => _echo = await RawEcho.StartAsync(ring: false);

    [GlobalSetup(Target = nameof(RawShm))]
    public async Task SetupRawShm() => _echo = await RawEcho.StartAsync(ring: true);

    [GlobalSetup(Target = nameof(IrpInKernel))]
    public Task SetupInKernel() => BootAsync(IsolationModel.InKernel, Transport.Pipe);

    [GlobalSetup(Target = nameof(IrpSharedHost))]
    public Task SetupSharedHost() => BootAsync(IsolationModel.SharedHost, Transport.Pipe);

    [GlobalSetup(Target = nameof(IrpProcess))]
    public Task SetupProcess() => BootAsync(IsolationModel.Process, Transport.Pipe);

    [GlobalSetup(Target = nameof(IrpProcessRing))]
    public Task SetupProcessRing() => BootAsync(IsolationModel.Process, Transport.Ring);

    [GlobalCleanup]
    public async Task Cleanup()
    {
        if (_echo is not null)
        {
            await _echo.DisposeAsync();
            _echo = null;
        }

        if (_kernel is not null)
        {
            await _kernel.DisposeAsync();
            _kernel = null;
        }
    }

    [Benchmark(Baseline = true, Description = "raw pipe echo")]
    public Task<IoResult> RawPipe() => _echo!.RoundTripAsync(_buffer);

    [Benchmark(Description = "raw shm ring echo")]
    public Task<IoResult> RawShm() => _echo!.RoundTripAsync(_buffer);

    [Benchmark(Description = "in-process call")]
    public Task<IoResult> InProcessCall() => NullRead(_buffer);

    [Benchmark(Description = "IRP in-kernel")]
    public ValueTask<IoResult> IrpInKernel() => _kernel!.Device.ReadAsync(_buffer);

    [Benchmark(Description = "IRP shared-host")]
    public ValueTask<IoResult> IrpSharedHost() => _kernel!.Device.ReadAsync(_buffer);

    [Benchmark(Description = "IRP process (pipe)")]
    public ValueTask<IoResult> IrpProcess() => _kernel!.Device.ReadAsync(_buffer);

    [Benchmark(Description = "IRP process (ring)")]
    public ValueTask<IoResult> IrpProcessRing() => _kernel!.Device.ReadAsync(_buffer);

    // What the Null driver does with a Read, called directly: no kernel, no IRP, no boundary.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Task<IoResult> NullRead(Memory<byte> buffer)
    {
        buffer.Span.Clear();
        return Task.FromResult(new IoResult(NtStatus.Success, buffer.Length));
    }

    private async Task BootAsync(IsolationModel isolation, Transport transport)
    {
        // No warm pool: an idle host would only take CPU from the one measured.
        _kernel = await KernelUnderTest.StartAsync(new KernelOptions { WarmPoolSize = 0, Transport = transport },
            KernelUnderTest.Manifest("Null"), isolation, @"\Device\Null");
        var first = await _kernel.Device.ReadAsync(_buffer);
        if (!first.IsSuccess)
        {
            throw new InvalidOperationException($"the first Read failed: {first}");
        }

        if (isolation == IsolationModel.Process && _kernel.TransportOf("Null") != transport)
        {
            throw new InvalidOperationException($"the Null driver's host is not on the {transport} transport");
        }
    }
}
