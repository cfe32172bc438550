using System.Diagnostics;
using System.Globalization;
using System.IO.Pipes;
using DriverIsolation.Kernel;
using DriverIsolation.Protocol;

namespace DriverIsolation.Cli.Bench;

/// <summary>
/// The comparisons of the benchmark suite, short and in one process tree: a 512-byte Read of the
/// Null driver per isolation model against the raw transport under it (drvhost's echo mode: same
/// pipe, same framing, same message sizes, no kernel and no IRP), throughput with 1, 16 and 64
/// requests in flight, allocations per request, and recovery from a killed host; and the process
/// model over the shared-memory ring transport against the same echo over the rings.
/// </summary>
internal sealed class QuickBench(bool quick, Action<string> progress)
{
    private const int Payload = 512;
    private readonly int _requests = quick ? 3_000 : 30_000;
    private readonly int _warmup = quick ? 500 : 3_000;
    private readonly TimeSpan _warmupTime = TimeSpan.FromMilliseconds(quick ? 300 : 1_000);

    public async Task<BenchReport> RunAsync()
    {
        var rtt = new Dictionary<IsolationModel, double[]>();
        var throughput = new SortedDictionary<string, double>(StringComparer.Ordinal);
        double allocPerIrp = 0;
        double allocPerIrpInKernel = 0;
        double inKernelLoopNs = 0;
        double? allocPerIrpHost = null;
        foreach (var model in new[] { IsolationModel.InKernel, IsolationModel.SharedHost, IsolationModel.Process })
        {
            progress(model.ToManifestName());
            await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 0 });
            await kernel.StartAsync([EmbeddedManifests.Load("Null")], model).ConfigureAwait(false);
            await using var nul = await kernel.OpenAsync(@"\Device\Null").ConfigureAwait(false);
            var buffer = new byte[Payload];
            await WarmUpAsync(() => nul.ReadAsync(buffer)).ConfigureAwait(false);
            rtt[model] = await TimeEachAsync(() => nul.ReadAsync(buffer)).ConfigureAwait(false);
            if (model == IsolationModel.SharedHost)
            {
                continue;
            }

            // What a request allocates in steady state, kernel side (this process) and, for the
            // process model, in the driver's host (as the host reports it, before and after).
            var hostBefore = model == IsolationModel.Process ? await kernel.HostAllocatedBytesAsync("Null", TimeSpan.FromSeconds(10)).ConfigureAwait(false) : null;
            var before = GC.GetTotalAllocatedBytes(precise: true);
            var loop = Stopwatch.GetTimestamp();
            for (var i = 0; i < _requests; i++)
            {
                await nul.ReadAsync(buffer).ConfigureAwait(false);
            }

            var elapsed = Stopwatch.GetElapsedTime(loop);
            var allocated = (GC.GetTotalAllocatedBytes(precise: true) - before) / (double)_requests;
            if (model == IsolationModel.InKernel)
            {
                // The mean over the loop, with no timer around each request (the p50 above times
                // each await, which costs about as much as an in-kernel dispatch itself).
                inKernelLoopNs = elapsed.TotalNanoseconds / _requests;
                allocPerIrpInKernel = allocated;
                continue;
            }

            allocPerIrp = allocated;
            var hostAfter = await kernel.HostAllocatedBytesAsync("Null", TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            allocPerIrpHost = hostBefore is { } b && hostAfter is { } a ? (a - b) / (double)_requests : null;
            foreach (var depth in new[] { 1, 16, 64 })
            {
                throughput[depth.ToString(CultureInfo.InvariantCulture)] = await ThroughputAsync(depth, () => nul.ReadAsync(new byte[Payload])).ConfigureAwait(false);
            }
        }

        // The same process isolation with every routine inline on the host's pipe reader: the
        // thread hop that saves (experimental; the default is the pool).
        progress("process, inline dispatch");
        var (inlineRtt, inlineAt) = await MeasureNullAsync(new KernelOptions { WarmPoolSize = 0, HostDispatch = DriverHost.HostDispatch.Inline }, 64).ConfigureAwait(false);
        var inlineThroughput = inlineAt["64"];

        // The same process isolation over the shared-memory ring transport.
        progress("process, ring transport");
        var (ringRtt, ringThroughput) = await MeasureNullAsync(new KernelOptions { WarmPoolSize = 0, Transport = Transport.Ring }, 1, 16, 64).ConfigureAwait(false);

        // No thread-pool hop on the path: routines inline on the host's reader, the caller's
        // continuation on the kernel's (over the ring: two spinning threads, as in raw_shm).
        var runToCompletionRtt = new Dictionary<Transport, double[]>();
        var runToCompletionThroughput = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var transport in new[] { Transport.Pipe, Transport.Ring })
        {
            var name = transport == Transport.Ring ? "ring" : "pipe";
            progress($"process, {name} transport, run to completion");
            var (rtt64, at) = await MeasureNullAsync(
                new KernelOptions { WarmPoolSize = 0, Transport = transport, HostDispatch = DriverHost.HostDispatch.Inline, InlineCompletions = true }, 64).ConfigureAwait(false);
            runToCompletionRtt[transport] = rtt64;
            runToCompletionThroughput[name] = at["64"];
        }

        // The raw baselines after the models: the framing code they share with them is warm by
        // now, so the comparison is not between cold and hot code.
        progress("raw pipe (drvhost --echo)");
        var (rawRtt, rawThroughput) = await RawEchoAsync(ring: false).ConfigureAwait(false);
        progress("raw shared memory (drvhost --echo over the ring)");
        var (rawShmRtt, rawShmThroughput) = await RawEchoAsync(ring: true).ConfigureAwait(false);

        // The block path behind NBD without NBD: the VBlock disk (DMA through the IOMMU, strict)
        // driven from this process as fio drives it over NBD (bench/nbd/randrw.fio).
        var block = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var (name, model, transport) in new[]
                 {
                     ("in-kernel", IsolationModel.InKernel, Transport.Pipe), ("process", IsolationModel.Process, Transport.Pipe),
                     ("process_ring", IsolationModel.Process, Transport.Ring),
                 })
        {
            progress($"VBlock, 4 KiB random reads and writes, {BlockDepth} in flight: {name}");
            block[name] = await BlockThroughputAsync(model, transport).ConfigureAwait(false);
        }

        progress("recovery");
        var recovery = await RecoveryAsync(prepared: true).ConfigureAwait(false);
        progress("recovery, driver not loaded ahead in the warm host");
        var recoveryUnprepared = await RecoveryAsync(prepared: false).ConfigureAwait(false);
        var processP50 = Percentile(rtt[IsolationModel.Process], 50);
        var rawP50 = Percentile(rawRtt, 50);
        return new BenchReport
        {
            Requests = _requests,
            PayloadBytes = Payload,
            RttP50Us = Keyed(rawRtt, rawShmRtt, ringRtt, runToCompletionRtt, inlineRtt, rtt, 50),
            RttP99Us = Keyed(rawRtt, rawShmRtt, ringRtt, runToCompletionRtt, inlineRtt, rtt, 99),
            RatioRunToCompletionVsRawShm = Math.Round(Percentile(runToCompletionRtt[Transport.Ring], 50) / Percentile(rawShmRtt, 50), 2),
            RunToCompletionThroughputPerS = runToCompletionThroughput,
            InlineDispatchThroughputPerS = inlineThroughput,
            RatioRingVsRawShm = Math.Round(Percentile(ringRtt, 50) / Percentile(rawShmRtt, 50), 2),
            RingThroughputPerS = ringThroughput,
            RawShmThroughputPerS = Math.Round(rawShmThroughput, 0),
            RatioProcessVsRawPipe = Math.Round(processP50 / rawP50, 2),
            InKernelNs = Math.Round(Percentile(rtt[IsolationModel.InKernel], 50) * 1000, 0),
            InKernelLoopNs = Math.Round(inKernelLoopNs, 0),
            AllocBytesPerIrp = Math.Round(allocPerIrp, 0),
            AllocBytesPerIrpHost = allocPerIrpHost is { } host ? Math.Round(host, 0) : null,
            AllocBytesPerIrpInKernel = Math.Round(allocPerIrpInKernel, 0),
            ThroughputPerS = throughput,
            RawThroughputPerS = Math.Round(rawThroughput, 0),
            BlockRandRwIops = block,
            RecoveryP50Ms = recovery,
            RecoveryUnpreparedP50Ms = recoveryUnprepared,
        };
    }

    /// <summary>The raw transport: <c>drvhost --echo</c> on the pipe, or on the shared-memory
    /// rings (the same rings, framing and wake-ups as the ring transport), no kernel and no IRP.</summary>
    private async Task<(double[] Rtt, double Throughput)> RawEchoAsync(bool ring)
    {
        var name = $"drviso-bench-{Environment.ProcessId}-{Guid.NewGuid():N}";
        await using var server = new NamedPipeServerStream(name, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        using var peer = Process.Start(DriverHostExecutable.StartInfo(null,
            ["--echo", "--pipe", name, "--parent-pid", Environment.ProcessId.ToString(CultureInfo.InvariantCulture)]))!;
        try
        {
            await server.WaitForConnectionAsync().WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            // Read as the kernel reads a host's completions, and the data copied to the caller's
            // buffer as the kernel copies it.
            await using var connection = new FrameConnection(server, untrustedPeer: true, borrowPayloads: true);
            var buffer = new byte[Payload];
            if (ring)
            {
                var defaults = new KernelOptions();
                connection.OfferRing(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), defaults.RingCapacityBytes, defaults.RingSpin);
            }

            long id = 0;
            async ValueTask<IoResult> RoundTrip()
            {
                connection.Send(new DispatchBody(++id, 1, MajorFunction.Read, 0, 1, 0, Payload, 0, ReadOnlyMemory<byte>.Empty, Payload));
                var reply = (ReceivedComplete)(await connection.ReadAsync().ConfigureAwait(false))!;
                reply.Data.Span.CopyTo(buffer);
                return new IoResult(reply.Status, reply.Information);
            }

            await WarmUpAsync(RoundTrip).ConfigureAwait(false);

            var rtt = await TimeEachAsync(RoundTrip).ConfigureAwait(false);

            // Pipelined: keep 64 requests in flight on the one connection.
            var clock = Stopwatch.StartNew();
            var sent = 0;
            for (; sent < 64; sent++)
            {
                connection.Send(new DispatchBody(++id, 1, MajorFunction.Read, 0, 1, 0, Payload, 0, ReadOnlyMemory<byte>.Empty, Payload));
            }

            for (var received = 0; received < _requests; received++)
            {
                await connection.ReadAsync().ConfigureAwait(false);
                if (sent < _requests)
                {
                    connection.Send(new DispatchBody(++id, 1, MajorFunction.Read, 0, 1, 0, Payload, 0, ReadOnlyMemory<byte>.Empty, Payload));
                    sent++;
                }
            }

            return (rtt, _requests / clock.Elapsed.TotalSeconds);
        }
        finally
        {
            if (!peer.HasExited)
            {
                peer.Kill();
            }
        }
    }

    /// <summary>The Null driver in its own process under <paramref name="options"/>: the round
    /// trips of one Read at a time (after a warm-up), and the throughput at each depth.</summary>
    private async Task<(double[] Rtt, SortedDictionary<string, double> Throughput)> MeasureNullAsync(KernelOptions options, params int[] depths)
    {
        await using var kernel = new Microkernel(options);
        await kernel.StartAsync([EmbeddedManifests.Load("Null")], IsolationModel.Process).ConfigureAwait(false);
        await using var nul = await kernel.OpenAsync(@"\Device\Null").ConfigureAwait(false);
        var buffer = new byte[Payload];
        await WarmUpAsync(() => nul.ReadAsync(buffer)).ConfigureAwait(false);
        var rtt = await TimeEachAsync(() => nul.ReadAsync(buffer)).ConfigureAwait(false);
        var throughput = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var depth in depths)
        {
            throughput[depth.ToString(CultureInfo.InvariantCulture)] = await ThroughputAsync(depth, () => nul.ReadAsync(new byte[Payload])).ConfigureAwait(false);
        }

        return (rtt, throughput);
    }

    /// <summary>Runs <paramref name="request"/> at least the warm-up count of times and for at
    /// least the warm-up time: the runtime compiles hot code again, optimized, only after it has
    /// run a while (an in-kernel request is so short that the count alone passes in milliseconds,
    /// and the figures would be those of the first, unoptimized code).</summary>
    private async Task WarmUpAsync(Func<ValueTask<IoResult>> request)
    {
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < _warmup || clock.Elapsed < _warmupTime; i++)
        {
            await request().ConfigureAwait(false);
        }
    }

    private async Task<double[]> TimeEachAsync(Func<ValueTask<IoResult>> request)
    {
        var micros = new double[_requests];
        for (var i = 0; i < _requests; i++)
        {
            var start = Stopwatch.GetTimestamp();
            await request().ConfigureAwait(false);
            // From the raw timestamps: a TimeSpan would round to 100 ns.
            micros[i] = (Stopwatch.GetTimestamp() - start) * 1e6 / Stopwatch.Frequency;
        }

        Array.Sort(micros);
        return micros;
    }

    private async Task<double> ThroughputAsync(int depth, Func<ValueTask<IoResult>> request)
    {
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, depth).Select(async lane =>
        {
            for (var i = lane; i < _requests; i += depth)
            {
                await request().ConfigureAwait(false);
            }
        })).ConfigureAwait(false);
        return Math.Round(_requests / clock.Elapsed.TotalSeconds, 0);
    }

    private const int BlockDepth = 8;
    private const int BlockSize = 4096;

    /// <summary>
    /// 4 KiB random reads and writes (half each, seeded) on <c>\Device\VBlock0</c> with
    /// <see cref="BlockDepth"/> in flight: requests a second, after a warm-up. Every request must
    /// succeed, and every block read back must be the last one written there.
    /// </summary>
    private async Task<double> BlockThroughputAsync(IsolationModel model, Transport transport)
    {
        await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 0, Transport = transport, IommuMode = Kernel.Hardware.IommuMode.Strict });
        await kernel.StartAsync([EmbeddedManifests.Load("VBlock")], model).ConfigureAwait(false);
        await using var disk = await kernel.OpenAsync(@"\Device\VBlock0").ConfigureAwait(false);
        var length = new byte[sizeof(long)];
        var sizeResult = await disk.DeviceIoControlAsync(Disk.DiskIoControl.GetLengthInfo, ReadOnlyMemory<byte>.Empty, length).ConfigureAwait(false);
        if (!sizeResult.IsSuccess)
        {
            throw new InvalidOperationException($"VBlock0 did not tell its size: {sizeResult.Status}");
        }

        // Each lane owns its own blocks (lane, lane + depth, ...): what it reads back is what it wrote last.
        var blocks = (int)(BitConverter.ToInt64(length) / BlockSize);
        var written = new int[blocks];
        async Task LaneAsync(int lane, int count, Random random)
        {
            var buffer = new byte[BlockSize];
            for (var i = 0; i < count; i++)
            {
                var index = lane + (BlockDepth * random.Next(blocks / BlockDepth));
                var offset = (long)index * BlockSize;
                if (random.Next(2) == 0)
                {
                    var result = await disk.ReadAsync(buffer, offset).ConfigureAwait(false);
                    if (!result.IsSuccess || BitConverter.ToInt32(buffer) != written[index])
                    {
                        throw new InvalidOperationException($"VBlock0 read of block {index}: {result.Status}, {BitConverter.ToInt32(buffer)} where {written[index]} was written");
                    }
                }
                else
                {
                    var stamp = written[index] + 1;
                    BitConverter.TryWriteBytes(buffer, stamp);
                    var result = await disk.WriteAsync(buffer, offset).ConfigureAwait(false);
                    if (!result.IsSuccess)
                    {
                        throw new InvalidOperationException($"VBlock0 write of block {index}: {result.Status}");
                    }

                    written[index] = stamp;
                }
            }
        }

        var warmup = Stopwatch.StartNew();
        while (warmup.Elapsed < _warmupTime)
        {
            await Task.WhenAll(Enumerable.Range(0, BlockDepth).Select(lane => LaneAsync(lane, _warmup / BlockDepth, new Random(lane)))).ConfigureAwait(false);
        }

        var perLane = _requests / BlockDepth;
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, BlockDepth).Select(lane => LaneAsync(lane, perLane, new Random(100 + lane)))).ConfigureAwait(false);
        return Math.Round(perLane * BlockDepth / clock.Elapsed.TotalSeconds, 0);
    }

    /// <summary>Kill the Null driver's host with a warm host ready (one that loaded the driver
    /// ahead of time if <paramref name="prepared"/>, the default); time until a Read that was
    /// issued right after the kill is served by the new instance.</summary>
    private async Task<double?> RecoveryAsync(bool prepared)
    {
        await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 1, PrepareWarmHosts = prepared });
        var manifest = EmbeddedManifests.Load("Null") with
        {
            Recovery = new RecoveryPolicy { InFlight = InFlightPolicy.Retry, QuietPeriod = TimeSpan.FromMilliseconds(50), MaxFailures = 1_000 },
        };
        await kernel.StartAsync([manifest], IsolationModel.Process).ConfigureAwait(false);
        await using var nul = await kernel.OpenAsync(@"\Device\Null").ConfigureAwait(false);
        var buffer = new byte[Payload];
        var samples = new List<double>();
        for (var i = 0; i < (quick ? 5 : 11); i++)
        {
            var settle = Stopwatch.StartNew();
            while (kernel.WarmPoolProcessIds.Count == 0 && settle.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(20).ConfigureAwait(false);
            }

            for (var j = 0; j < 200; j++)
            {
                await nul.ReadAsync(buffer).ConfigureAwait(false);
            }

            var start = Stopwatch.GetTimestamp();
            kernel.KillDriverHost("Null");
            var result = await nul.ReadAsync(buffer).ConfigureAwait(false);
            if (result.IsSuccess)
            {
                samples.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
        }

        return samples.Count == 0 ? null : Math.Round(Percentile([.. samples.Order()], 50), 2);
    }

    private static SortedDictionary<string, double?> Keyed(double[] raw, double[] rawShm, double[] ring, Dictionary<Transport, double[]> runToCompletion, double[] inline,
        Dictionary<IsolationModel, double[]> models, double p) => new(StringComparer.Ordinal)
    {
        ["process_run_to_completion"] = Math.Round(Percentile(runToCompletion[Transport.Pipe], p), 2),
        ["ring_run_to_completion"] = Math.Round(Percentile(runToCompletion[Transport.Ring], p), 2),
        ["process_inline_dispatch"] = Math.Round(Percentile(inline, p), 2),
        ["raw_pipe"] = Math.Round(Percentile(raw, p), 2),
        ["raw_shm"] = Math.Round(Percentile(rawShm, p), 2),
        ["in_kernel"] = Math.Round(Percentile(models[IsolationModel.InKernel], p), 3),
        ["shared_host"] = Math.Round(Percentile(models[IsolationModel.SharedHost], p), 2),
        ["process"] = Math.Round(Percentile(models[IsolationModel.Process], p), 2),
        ["ring"] = Math.Round(Percentile(ring, p), 2),
    };

    private static double Percentile(double[] sorted, double p) =>
        sorted[Math.Clamp((int)Math.Ceiling(p / 100 * sorted.Length) - 1, 0, sorted.Length - 1)];
}
