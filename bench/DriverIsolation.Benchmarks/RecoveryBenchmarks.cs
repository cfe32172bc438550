using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using DriverIsolation.Benchmarks.Infrastructure;
using DriverIsolation.Kernel;

namespace DriverIsolation.Benchmarks;

/// <summary>
/// Recovery of a crashed driver: the Null driver's host is killed (as kill -9 would) and a Read
/// issued right after is timed until the restarted instance served it (the manifest retries
/// idempotent in-flight requests). The baseline restarts into an idle host from the warm pool,
/// which loaded the driver ahead of time (<see cref="KernelOptions.PrepareWarmHosts"/>, the
/// default); another into a pooled host that did not; the last starts a new drvhost process. One kill per iteration; before each, the setup waits
/// until the driver runs, the pool is full again and the instance has lived past its quiet
/// period (so the restart is immediate, not backed off).
/// </summary>
[MemoryDiagnoser]
[Config(typeof(RecoveryConfig))]
public class RecoveryBenchmarks
{
    private static readonly TimeSpan QuietPeriod = TimeSpan.FromMilliseconds(50);
    private static readonly TimeSpan SettleLimit = TimeSpan.FromSeconds(60);
    private readonly byte[] _buffer = new byte[512];
    private KernelUnderTest? _kernel;
    private int _poolSize;

    [GlobalSetup(Target = nameof(WarmPool))]
    public Task SetupWarmPool() => BootAsync(poolSize: 1);

    [GlobalSetup(Target = nameof(WarmPoolUnprepared))]
    public Task SetupWarmPoolUnprepared() => BootAsync(poolSize: 1, prepare: false);

    [GlobalSetup(Target = nameof(ColdStart))]
    public Task SetupColdStart() => BootAsync(poolSize: 0);

    [IterationSetup]
    public void Settle()
    {
        var clock = Stopwatch.StartNew();
        WaitUntilHealthy();
        for (var i = 0; i < 50; i++)
        {
            ReadOrThrow();
        }

        var lived = clock.Elapsed;
        if (lived < 2 * QuietPeriod)
        {
            Thread.Sleep((2 * QuietPeriod) - lived);
        }
    }

    [GlobalCleanup]
    public async Task Cleanup()
    {
        if (_kernel is not null)
        {
            try
            {
                // The last restart refills the pool: let that host finish starting, so the kernel
                // stops it with the others instead of abandoning a start in flight.
                WaitUntilHealthy();
            }
            finally
            {
                await _kernel.DisposeAsync();
                _kernel = null;
            }
        }
    }

    [Benchmark(Baseline = true, Description = "kill -> first IRP served, warm pool")]
    public Task<IoResult> WarmPool() => KillAndReadAsync();

    [Benchmark(Description = "kill -> first IRP served, warm pool, driver not loaded ahead")]
    public Task<IoResult> WarmPoolUnprepared() => KillAndReadAsync();

    [Benchmark(Description = "kill -> first IRP served, no warm pool")]
    public Task<IoResult> ColdStart() => KillAndReadAsync();

    private async Task<IoResult> KillAndReadAsync()
    {
        _kernel!.Kernel.KillDriverHost("Null");
        var result = await _kernel.Device.ReadAsync(_buffer);
        return result.IsSuccess ? result : throw new InvalidOperationException($"the Read after the kill failed: {result}");
    }

    private void WaitUntilHealthy()
    {
        var kernel = _kernel!.Kernel;
        var clock = Stopwatch.StartNew();
        while (kernel.GetDrivers().Single().State != DriverState.Running || kernel.WarmPoolProcessIds.Count < _poolSize)
        {
            if (clock.Elapsed > SettleLimit)
            {
                throw new TimeoutException($"the Null driver did not settle within {SettleLimit.TotalSeconds} s");
            }

            Thread.Sleep(10);
        }
    }

    private void ReadOrThrow()
    {
        var result = _kernel!.Device.ReadAsync(_buffer).AsTask().GetAwaiter().GetResult();
        if (!result.IsSuccess)
        {
            throw new InvalidOperationException($"a Read before the kill failed: {result}");
        }
    }

    private async Task BootAsync(int poolSize, bool prepare = true)
    {
        _poolSize = poolSize;
        var manifest = KernelUnderTest.Manifest("Null") with
        {
            Recovery = new RecoveryPolicy { InFlight = InFlightPolicy.Retry, QuietPeriod = QuietPeriod, MaxFailures = 1_000 },
        };
        _kernel = await KernelUnderTest.StartAsync(new KernelOptions { WarmPoolSize = poolSize, PrepareWarmHosts = prepare }, manifest, IsolationModel.Process, @"\Device\Null");
    }
}
