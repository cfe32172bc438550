using System.Collections.Concurrent;
using System.Diagnostics;
using DriverIsolation.Kernel;

namespace DriverIsolation.Cli.Fuzz;

/// <summary>What a fuzz run saw. <see cref="KernelFaults"/> must be empty.</summary>
internal sealed record FuzzReport(
    long Inputs,
    int Seed,
    double Seconds,
    int Sessions,
    long Violations,
    IReadOnlyDictionary<string, long> ViolationsByReason,
    long CompletionsRefused,
    long IommuFaults,
    long FuzzRequests,
    IReadOnlyDictionary<string, long> FuzzRequestsByStatus,
    long ControlOperations,
    IReadOnlyList<string> KernelFaults);

/// <summary>
/// <c>drviso fuzz</c>: a kernel whose \Device\Fuzz is driven by fuzzhost, a host that answers with
/// messages drawn at random, while clients keep requests flowing to it and a control workload
/// checks that the in-kernel VBlock (its data through the IOMMU) and Null keep serving. Counts as a
/// kernel fault: a bug check; a handler that threw on a host's message; a request to any device
/// that never completed or completed with more data than its buffer; control data that read back
/// wrong; an exception nobody observed; IRPs left outstanding at the end.
/// </summary>
internal sealed class FuzzRun(long inputs, int seed, Action<string> progress)
{
    private const int Clients = 16;
    private static readonly TimeSpan RequestBound = TimeSpan.FromSeconds(20);
    private readonly ConcurrentQueue<string> _faults = new();
    private readonly ConcurrentDictionary<string, long> _violations = new();
    private readonly ConcurrentDictionary<string, long> _byStatus = new();
    private long _refused;
    private long _violationCount;
    private long _fuzzRequests;
    private long _controlOperations;
    private int _sessions;

    public static IReadOnlyList<DriverManifest> Manifests(int seed) =>
    [
        EmbeddedManifests.Load("Null") with { Isolation = IsolationModel.InKernel },
        EmbeddedManifests.Load("VBlock") with { Isolation = IsolationModel.InKernel },
        new DriverManifest
        {
            Name = "Fuzz",
            Assembly = "fuzzhost-loads-no-assembly.dll",
            Isolation = IsolationModel.Process,
            Parameters = new Dictionary<string, string> { ["seed"] = seed.ToString(System.Globalization.CultureInfo.InvariantCulture) },
            Devices =
            [
                new DeviceManifest
                {
                    Name = @"\Device\Fuzz",
                    Hardware = new HardwareManifest { Kind = "block", CapacityBytes = 1 << 20, DmaWindowBytes = 64 << 10 },
                },
            ],
            Limits = new DriverLimits { RequestTimeout = TimeSpan.FromMilliseconds(100) },
            Recovery = new RecoveryPolicy
            {
                MaxFailures = int.MaxValue,
                BackoffBase = TimeSpan.FromMilliseconds(1),
                BackoffMax = TimeSpan.FromMilliseconds(5),
                QuietPeriod = TimeSpan.FromMilliseconds(50),
            },
        },
    ];

    public async Task<FuzzReport> RunAsync(Microkernel kernel)
    {
        kernel.Events.Raised += OnEvent;
        EventHandler<UnobservedTaskExceptionEventArgs> unobserved = (_, e) => Fault($"unobserved exception: {e.Exception.InnerException?.Message ?? e.Exception.Message}");
        TaskScheduler.UnobservedTaskException += unobserved;
        var clock = Stopwatch.StartNew();
        using var stop = new CancellationTokenSource();
        try
        {
            var workers = Enumerable.Range(0, Clients).Select(i => FuzzClientAsync(kernel, seed + i, stop.Token))
                .Append(ControlAsync(kernel, stop.Token)).ToList();
            var next = TimeSpan.FromSeconds(5);
            while (Inputs(kernel) < inputs && kernel.BugCheckReason is null && workers.All(w => !w.IsCompleted))
            {
                await Task.Delay(50).ConfigureAwait(false);
                if (clock.Elapsed >= next)
                {
                    next += TimeSpan.FromSeconds(5);
                    progress($"{Inputs(kernel):N0} inputs, {_sessions} sessions, {Interlocked.Read(ref _violationCount):N0} violations, {_faults.Count} kernel faults");
                }
            }

            await stop.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(workers).ConfigureAwait(false);

            // Every request has ended; nothing may be left in the kernel's tables.
            var settle = Stopwatch.StartNew();
            while (kernel.OutstandingIrps != 0 && settle.Elapsed < TimeSpan.FromSeconds(10))
            {
                await Task.Delay(20).ConfigureAwait(false);
            }

            if (kernel.OutstandingIrps != 0)
            {
                Fault($"{kernel.OutstandingIrps} IRPs still outstanding after every request ended");
            }

            if (kernel.BugCheckReason is { } reason)
            {
                Fault($"bug check: {reason}");
            }

            if (!kernel.VerifyKernelMemory().Intact)
            {
                Fault("kernel memory damaged");
            }
        }
        finally
        {
            kernel.Events.Raised -= OnEvent;
            TaskScheduler.UnobservedTaskException -= unobserved;
        }

        return new FuzzReport(Inputs(kernel), seed, clock.Elapsed.TotalSeconds, _sessions, Interlocked.Read(ref _violationCount),
            new SortedDictionary<string, long>(_violations), Interlocked.Read(ref _refused), kernel.GetIommu()?.FaultCount ?? 0,
            Interlocked.Read(ref _fuzzRequests), new SortedDictionary<string, long>(_byStatus), Interlocked.Read(ref _controlOperations), [.. _faults]);
    }

    // Every message the kernel took from a host, plus the frames it refused before they were one.
    private long Inputs(Microkernel kernel) => kernel.HostMessagesReceived + Interlocked.Read(ref _violationCount);

    private void OnEvent(KernelEvent e)
    {
        switch (e.Kind)
        {
            case KernelEventKind.HostStarted when e.Driver == "Fuzz":
                Interlocked.Increment(ref _sessions);
                break;
            case KernelEventKind.CompletionRefused:
                Interlocked.Increment(ref _refused);
                break;
            case KernelEventKind.ProtocolViolation:
                Interlocked.Increment(ref _violationCount);
                _violations.AddOrUpdate(Classify(e.Detail), 1, (_, n) => n + 1);
                if (e.Detail.Contains("could not handle", StringComparison.Ordinal))
                {
                    Fault($"a handler threw: {e.Detail}");
                }

                break;
            case KernelEventKind.BugCheck:
                Fault($"bug check: {e.Detail}");
                break;
        }
    }

    // The reason without the numbers in it, so like violations count together.
    private static string Classify(string detail)
    {
        var text = new string([.. detail.Take(80).Select(c => char.IsDigit(c) ? '#' : c)]);
        return System.Text.RegularExpressions.Regex.Replace(text, "#+", "#");
    }

    private void Fault(string what)
    {
        if (_faults.Count < 100)
        {
            _faults.Enqueue(what);
        }
    }

    /// <summary>Random requests to the fuzzed device; whatever the host does, each must end, and
    /// never with more data than its buffer.</summary>
    private async Task FuzzClientAsync(Microkernel kernel, int clientSeed, CancellationToken stop)
    {
        var random = new Random(clientSeed);
        while (!stop.IsCancellationRequested)
        {
            DeviceHandle handle;
            try
            {
                handle = await kernel.OpenAsync(@"\Device\Fuzz", stop).WaitAsync(RequestBound, CancellationToken.None).ConfigureAwait(false);
            }
            catch (IoException)
            {
                await Task.Delay(5, CancellationToken.None).ConfigureAwait(false);
                continue;
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (TimeoutException)
            {
                Fault("an open of \\Device\\Fuzz never completed");
                return;
            }

            await using (handle.ConfigureAwait(false))
            {
                for (var i = 0; i < 200 && !stop.IsCancellationRequested; i++)
                {
                    var size = random.Next(4) == 0 ? 0 : random.Next(1, 4097);
                    var buffer = new byte[size];
                    random.NextBytes(buffer);
                    using var cancel = new CancellationTokenSource();
                    var kind = random.Next(5);
                    var request = kind switch
                    {
                        0 => handle.ReadAsync(buffer, random.Next(16) * 512L, cancel.Token).AsTask(),
                        1 => handle.WriteAsync(buffer, random.Next(16) * 512L, cancel.Token).AsTask(),
                        2 => handle.DeviceIoControlAsync((uint)random.Next(), buffer.AsMemory(0, size / 2), buffer.AsMemory(size / 2), cancel.Token).AsTask(),
                        3 => handle.FlushAsync(cancel.Token).AsTask(),
                        _ => handle.ReadAsync(buffer, 0, cancel.Token).AsTask(),
                    };
                    if (random.Next(8) == 0)
                    {
                        await cancel.CancelAsync().ConfigureAwait(false);
                    }

                    IoResult result;
                    try
                    {
                        result = await request.WaitAsync(RequestBound, CancellationToken.None).ConfigureAwait(false);
                    }
                    catch (TimeoutException)
                    {
                        Fault($"a {(kind is 0 or 4 ? "read" : kind == 1 ? "write" : kind == 2 ? "control request" : "flush")} of \\Device\\Fuzz never completed");
                        continue;
                    }

                    Interlocked.Increment(ref _fuzzRequests);
                    _byStatus.AddOrUpdate(result.Status.ToString(), 1, (_, n) => n + 1);
                    var capacity = kind switch { 0 or 4 => size, 2 => size - (size / 2), _ => long.MaxValue };
                    if (result.Information < 0 || (result.Status.IsSuccess() && result.Information > capacity && kind is 0 or 2 or 4))
                    {
                        Fault($"a request completed with information {result.Information} for a {size}-byte buffer ({result.Status})");
                    }
                }
            }
        }
    }

    /// <summary>Verified block I/O through the in-kernel VBlock (DMA through the IOMMU) and reads
    /// of Null, all the while: innocent devices must not notice the fuzzing.</summary>
    private async Task ControlAsync(Microkernel kernel, CancellationToken stop)
    {
        var random = new Random(seed);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0", CancellationToken.None).ConfigureAwait(false);
        await using var nul = await kernel.OpenAsync(@"\??\NUL", CancellationToken.None).ConfigureAwait(false);
        while (!stop.IsCancellationRequested)
        {
            var data = new byte[4096 * random.Next(1, 9)];
            random.NextBytes(data);
            var offset = 4096L * random.Next(1024);
            var back = new byte[data.Length];
            try
            {
                var write = await disk.WriteAsync(data, offset, CancellationToken.None).AsTask().WaitAsync(RequestBound, CancellationToken.None).ConfigureAwait(false);
                var read = await disk.ReadAsync(back, offset, CancellationToken.None).AsTask().WaitAsync(RequestBound, CancellationToken.None).ConfigureAwait(false);
                var zero = await nul.ReadAsync(new byte[512], 0, CancellationToken.None).AsTask().WaitAsync(RequestBound, CancellationToken.None).ConfigureAwait(false);
                if (write != new IoResult(NtStatus.Success, data.Length) || read != new IoResult(NtStatus.Success, data.Length) || !back.AsSpan().SequenceEqual(data)
                    || zero != new IoResult(NtStatus.Success, 512))
                {
                    Fault($"control I/O went wrong: VBlock write {write}, read {read}, data {(back.AsSpan().SequenceEqual(data) ? "intact" : "DIFFERENT")}, Null {zero}");
                }
            }
            catch (TimeoutException)
            {
                Fault("a control request never completed");
            }

            Interlocked.Increment(ref _controlOperations);
            await Task.Delay(2, CancellationToken.None).ConfigureAwait(false);
        }
    }
}
