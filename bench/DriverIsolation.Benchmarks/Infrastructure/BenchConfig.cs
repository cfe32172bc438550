using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Engines;
using Perfolizer.Horology;
using BenchmarkDotNet.Jobs;

namespace DriverIsolation.Benchmarks.Infrastructure;

/// <summary>
/// The job every suite runs with: one launch, a few warm-up and twelve measured iterations of
/// half a second. A whole <c>--filter '*'</c> run stays within minutes on a 2-vCPU machine; the
/// process paths cost ~100 µs per request, so an iteration still holds thousands of them.
/// The default exporters stay (among them the GitHub markdown report docs/results/benchmarks
/// keeps).
/// </summary>
public class BenchConfig : ManualConfig
{
    public BenchConfig()
        : this(ShortJob)
    {
    }

    protected BenchConfig(Job job)
    {
        AddJob(job);
    }

    internal static Job ShortJob => Job.Default
        .WithId("Short")
        .WithLaunchCount(1)
        .WithWarmupCount(3)
        .WithIterationCount(12)
        .WithIterationTime(TimeInterval.FromMilliseconds(500));

    /// <summary>Like the short job, but one invocation per unrolled step: an invocation of a
    /// pipelined benchmark issues a thousand requests, and sixteen of them would make an
    /// iteration last seconds.</summary>
    internal static Job PipelinedJob => ShortJob.WithId("Pipelined").WithUnrollFactor(1);

    /// <summary>One kill per iteration, no pilot: each iteration is measured as it is (the
    /// setup before it waits until the driver is healthy again and the warm pool refilled).</summary>
    internal static Job RecoveryJob => Job.Default
        .WithId("Recovery")
        .WithStrategy(RunStrategy.Monitoring)
        .WithLaunchCount(1)
        .WithWarmupCount(2)
        .WithIterationCount(15)
        .WithInvocationCount(1)
        .WithUnrollFactor(1);
}

/// <summary>The short job with one invocation per unrolled step (see <see cref="BenchConfig.PipelinedJob"/>).</summary>
public sealed class PipelinedConfig : BenchConfig
{
    public PipelinedConfig()
        : base(PipelinedJob)
    {
    }
}

/// <summary>One measured kill per iteration (see <see cref="BenchConfig.RecoveryJob"/>).</summary>
public sealed class RecoveryConfig : BenchConfig
{
    public RecoveryConfig()
        : base(RecoveryJob)
    {
    }
}
