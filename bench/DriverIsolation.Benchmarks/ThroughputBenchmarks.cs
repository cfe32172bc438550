using BenchmarkDotNet.Attributes;
using DriverIsolation.Benchmarks.Infrastructure;
using DriverIsolation.Kernel;

namespace DriverIsolation.Benchmarks;

/// <summary>
/// Pipelined 512-byte Reads with <see cref="Depth"/> requests in flight, reported per request
/// (each invocation issues <see cref="Requests"/>). The baseline is the raw named pipe with as
/// many Dispatch frames in flight on the one connection (drvhost's echo mode); against it, the
/// Null driver isolated in its own process over the pipe, and the same over the ring transport
/// with its own raw baseline (the echo over the shared-memory rings), and over the pipe with no
/// thread-pool hop (run to completion). In flight through the client API means
/// <see cref="Depth"/> callers, each awaiting its Read before the next.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(PipelinedConfig))]
public class ThroughputBenchmarks
{
    /// <summary>Requests per invocation: a multiple of every depth.</summary>
    public const int Requests = 1024;

    private const int Payload = 512;
    private byte[][] _buffers = [];
    private RawEcho? _echo;
    private KernelUnderTest? _kernel;

    [Params(1, 16, 64)]
    public int Depth { get; set; }

    [GlobalSetup(Target = nameof(RawPipe))]
    public async Task SetupRawPipe() => _echo = await RawEcho.StartAsync(ring: false);

    [GlobalSetup(Target = nameof(RawShm))]
    public async Task SetupRawShm() => _echo = await RawEcho.StartAsync(ring: true);

    [GlobalSetup(Target = nameof(Process))]
    public Task SetupProcess() => BootAsync(Transport.Pipe);

    [GlobalSetup(Target = nameof(ProcessRing))]
    public Task SetupProcessRing() => BootAsync(Transport.Ring);

    [GlobalSetup(Target = nameof(ProcessRunToCompletion))]
    public Task SetupProcessRunToCompletion() => BootAsync(Transport.Pipe, runToCompletion: true);

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

    [Benchmark(Baseline = true, OperationsPerInvoke = Requests, Description = "raw pipe echo, pipelined")]
    public Task RawPipe() => _echo!.PipelinedAsync(Depth, Requests, Payload);

    [Benchmark(OperationsPerInvoke = Requests, Description = "raw shm ring echo, pipelined")]
    public Task RawShm() => _echo!.PipelinedAsync(Depth, Requests, Payload);

    [Benchmark(OperationsPerInvoke = Requests, Description = "IRP process (pipe)")]
    public Task Process() => ReadInLanesAsync();

    [Benchmark(OperationsPerInvoke = Requests, Description = "IRP process (ring)")]
    public Task ProcessRing() => ReadInLanesAsync();

    /// <summary>Over the pipe with no thread-pool hop: routines inline on the host's reader, the
    /// lanes' continuations on the kernel's (<see cref="KernelOptions.InlineCompletions"/>).</summary>
    [Benchmark(OperationsPerInvoke = Requests, Description = "IRP process (pipe, run to completion)")]
    public Task ProcessRunToCompletion() => ReadInLanesAsync();

    private Task ReadInLanesAsync()
    {
        var lanes = new Task[Depth];
        for (var lane = 0; lane < lanes.Length; lane++)
        {
            lanes[lane] = ReadManyAsync(_kernel!.Device, _buffers[lane], Requests / Depth);
        }

        return Task.WhenAll(lanes);
    }

    private static async Task ReadManyAsync(DeviceHandle device, byte[] buffer, int count)
    {
        for (var i = 0; i < count; i++)
        {
            var result = await device.ReadAsync(buffer).ConfigureAwait(false);
            if (!result.IsSuccess)
            {
                throw new InvalidOperationException($"a pipelined Read failed: {result}");
            }
        }
    }

    private async Task BootAsync(Transport transport, bool runToCompletion = false)
    {
        _buffers = [.. Enumerable.Range(0, Depth).Select(_ => new byte[Payload])];
        var options = new KernelOptions
        {
            WarmPoolSize = 0,
            Transport = transport,
            HostDispatch = runToCompletion ? DriverHost.HostDispatch.Inline : DriverHost.HostDispatch.Pool,
            InlineCompletions = runToCompletion,
        };
        _kernel = await KernelUnderTest.StartAsync(options,
            KernelUnderTest.Manifest("Null"), IsolationModel.Process, @"\Device\Null");
        await ReadInLanesAsync();
        if (_kernel.TransportOf("Null") != transport)
        {
            throw new InvalidOperationException($"the Null driver's host is not on the {transport} transport");
        }
    }
}
