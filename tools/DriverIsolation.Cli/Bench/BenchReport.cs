using System.Text.Json.Serialization;

namespace DriverIsolation.Cli.Bench;

/// <summary>What <c>drviso bench</c> measured. A figure not measured is null rather than
/// missing, so a reader sees it was not.</summary>
internal sealed record BenchReport
{
    [JsonPropertyName("requests")] public int Requests { get; init; }

    [JsonPropertyName("payload_bytes")] public int PayloadBytes { get; init; }

    [JsonPropertyName("rtt_p50_us")] public required SortedDictionary<string, double?> RttP50Us { get; init; }

    [JsonPropertyName("rtt_p99_us")] public required SortedDictionary<string, double?> RttP99Us { get; init; }

    [JsonPropertyName("ratio_process_vs_raw_pipe")] public double RatioProcessVsRawPipe { get; init; }

    /// <summary>The in-kernel round trip's p50, each await timed on its own.</summary>
    [JsonPropertyName("in_kernel_ns")] public double InKernelNs { get; init; }

    /// <summary>In-kernel: the mean time per request over a loop of awaited Reads, with no timer
    /// around each one.</summary>
    [JsonPropertyName("in_kernel_loop_ns")] public double InKernelLoopNs { get; init; }

    /// <summary>Allocated per request in steady state by the kernel's process, process model
    /// (a Read of 512 B on Null, one at a time).</summary>
    [JsonPropertyName("alloc_bytes_per_irp")] public double AllocBytesPerIrp { get; init; }

    /// <summary>The same requests, allocated in the driver's host process (as it reports them);
    /// null if the host did not answer.</summary>
    [JsonPropertyName("alloc_bytes_per_irp_host")] public double? AllocBytesPerIrpHost { get; init; }

    /// <summary>Allocated per request by the in-kernel model (the kernel's process is all there is).</summary>
    [JsonPropertyName("alloc_bytes_per_irp_in_kernel")] public double AllocBytesPerIrpInKernel { get; init; }

    [JsonPropertyName("throughput_per_s")] public required SortedDictionary<string, double> ThroughputPerS { get; init; }

    /// <summary>The process model at depth 64 with every routine inline on the host's pipe reader
    /// (the default runs them on the host's thread pool).</summary>
    [JsonPropertyName("inline_dispatch_throughput_per_s")] public double InlineDispatchThroughputPerS { get; init; }

    [JsonPropertyName("raw_throughput_per_s")] public double RawThroughputPerS { get; init; }

    [JsonPropertyName("ratio_ring_vs_raw_shm")] public double RatioRingVsRawShm { get; init; }

    [JsonPropertyName("ring_throughput_per_s")] public required SortedDictionary<string, double> RingThroughputPerS { get; init; }

    /// <summary>The ring transport with no thread-pool hop: routines inline on the host's reader,
    /// callers' continuations on the kernel's (<c>ring_run_to_completion</c> in the round trips;
    /// <c>process_run_to_completion</c> is the same over the pipe).</summary>
    [JsonPropertyName("ratio_ring_run_to_completion_vs_raw_shm")] public double RatioRunToCompletionVsRawShm { get; init; }

    /// <summary>With no thread-pool hop, at depth 64, keyed by transport (<c>pipe</c>, <c>ring</c>).</summary>
    [JsonPropertyName("run_to_completion_throughput_per_s")] public required SortedDictionary<string, double> RunToCompletionThroughputPerS { get; init; }

    [JsonPropertyName("raw_shm_throughput_per_s")] public double RawShmThroughputPerS { get; init; }

    /// <summary>The VBlock disk (IOMMU strict), 4 KiB random reads and writes with 8 in flight from
    /// the kernel's process (fio's job over NBD, without NBD), requests a second, keyed by model
    /// (<c>in-kernel</c>, <c>process</c>, <c>process_ring</c>).</summary>
    [JsonPropertyName("block_randrw_iops")] public required SortedDictionary<string, double> BlockRandRwIops { get; init; }

    [JsonPropertyName("recovery_p50_ms")] public double? RecoveryP50Ms { get; init; }

    /// <summary>The same with <c>KernelOptions.PrepareWarmHosts</c> off: the warm host loads the
    /// driver's assembly and compiles its code during the restart.</summary>
    [JsonPropertyName("recovery_unprepared_p50_ms")] public double? RecoveryUnpreparedP50Ms { get; init; }
}
