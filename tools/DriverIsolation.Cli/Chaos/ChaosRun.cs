using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using DriverIsolation.Disk;
using DriverIsolation.Kernel;

namespace DriverIsolation.Cli.Chaos;

/// <summary>
/// A mixed workload on every sample device while random driver hosts are killed with SIGKILL.
/// Disk lanes write versioned blocks and read them back (each lane owns its blocks, so the
/// expected content is always known); Null lanes read and write; an Echo lane sends numbered
/// messages. Every request is counted when issued and when completed: a request that never
/// completes is lost. A final pass reads back every block whose last write succeeded. The stop
/// token ends the lanes' loops, never a request: what was issued is seen through.
/// </summary>
internal sealed class ChaosRun(Microkernel kernel, TimeSpan duration, TimeSpan killEvery, int seed)
{
    private const int BlockSize = 4096;
    private const int DiskLanes = 4;
    private const int NullLanes = 2;

    /// <summary>Longer than any request's deadline: a request still open after it is lost.</summary>
    private static readonly TimeSpan LostAfter = TimeSpan.FromSeconds(45);

    private readonly ConcurrentDictionary<NtStatus, long> _completed = new();
    private readonly ConcurrentDictionary<string, long> _killedAt = new(StringComparer.Ordinal);
    private readonly ConcurrentBag<double> _recoveries = [];
    private readonly List<string> _problems = [];
    private long _issued;
    private long _lost;
    private long _verifiedBlocks;
    private long _verifiedMessages;
    private int _kills;

    public async Task<ChaosReport> RunAsync(Action<string>? progress = null)
    {
        kernel.Events.Raised += OnEvent;
        var clock = Stopwatch.StartNew();
        await using var disk = await kernel.OpenAsync(@"\??\RamDisk0").ConfigureAwait(false);
        await using var nul = await kernel.OpenAsync(@"\??\NUL").ConfigureAwait(false);
        await using var echoWriter = await kernel.OpenAsync(@"\??\Echo").ConfigureAwait(false);
        await using var echoReader = await kernel.OpenAsync(@"\??\Echo").ConfigureAwait(false);
        var geometry = new byte[DiskGeometry.EncodedSize];
        await TrackAsync(disk.DeviceIoControlAsync(DiskIoControl.GetDriveGeometry, ReadOnlyMemory<byte>.Empty, geometry)).ConfigureAwait(false);
        var blocks = (int)(DiskGeometry.Read(geometry).LengthBytes / BlockSize);
        var expected = new int?[blocks];

        using (var stop = new CancellationTokenSource(duration))
        {
            var lanes = new List<Task>();
            lanes.AddRange(Enumerable.Range(0, DiskLanes).Select(lane => DiskLaneAsync(disk, lane, blocks, expected, stop.Token)));
            lanes.AddRange(Enumerable.Range(0, NullLanes).Select(_ => NullLaneAsync(nul, stop.Token)));
            lanes.Add(EchoLaneAsync(echoWriter, echoReader, stop.Token));
            lanes.Add(KillerAsync(progress, stop.Token));
            await Task.WhenAll(lanes).ConfigureAwait(false);
        }

        var running = await WaitForAllRunningAsync().ConfigureAwait(false);
        if (!running)
        {
            Problem("not every driver was running again 30 s after the last kill");
        }

        await VerifyDiskAsync(disk, expected).ConfigureAwait(false);
        var alive = kernel.BugCheckReason is null && running && await ProbeAsync(nul, disk).ConfigureAwait(false);
        kernel.Events.Raised -= OnEvent;
        var recoveries = _recoveries.Order().ToArray();
        return new ChaosReport
        {
            DurationSeconds = Math.Round(clock.Elapsed.TotalSeconds, 1),
            Seed = seed,
            Issued = Interlocked.Read(ref _issued),
            Completed = new SortedDictionary<string, long>(_completed.ToDictionary(c => c.Key.ToString(), c => c.Value), StringComparer.Ordinal),
            Lost = Interlocked.Read(ref _lost),
            Duplicated = kernel.DuplicateDeliveries,
            Kills = _kills,
            Restarts = kernel.GetDrivers().Sum(d => d.Restarts),
            RecoveryP50Ms = Percentile(recoveries, 50),
            RecoveryP99Ms = Percentile(recoveries, 99),
            DataVerified = _problems.Count == 0,
            VerifiedBlocks = _verifiedBlocks,
            VerifiedMessages = _verifiedMessages,
            KernelAlive = alive,
            Quarantined = [.. kernel.GetQuarantined().Select(d => d.Name)],
            Problems = [.. _problems.Take(50)],
        };
    }

    private async Task DiskLaneAsync(DeviceHandle disk, int lane, int blocks, int?[] expected, CancellationToken stop)
    {
        var random = new Random(seed * 1000 + lane);
        var version = 0;
        var back = new byte[BlockSize];
        while (!stop.IsCancellationRequested)
        {
            var block = (random.Next(blocks / DiskLanes) * DiskLanes) + lane;
            var data = Pattern(block, ++version);
            var write = await TrackAsync(disk.WriteAsync(data, (long)block * BlockSize, CancellationToken.None)).ConfigureAwait(false);
            if (write is not { Status: NtStatus.Success })
            {
                // Applied or not, nobody can say: the block is unknown until its next good write.
                expected[block] = null;
                continue;
            }

            expected[block] = version;
            var read = await TrackAsync(disk.ReadAsync(back, (long)block * BlockSize, CancellationToken.None)).ConfigureAwait(false);
            if (read is { Status: NtStatus.Success })
            {
                Check(back, block, version);
            }
        }
    }

    private async Task NullLaneAsync(DeviceHandle nul, CancellationToken stop)
    {
        var buffer = new byte[512];
        var i = 0;
        while (!stop.IsCancellationRequested)
        {
            await TrackAsync(i++ % 2 == 0 ? nul.ReadAsync(buffer, 0, CancellationToken.None) : nul.WriteAsync(buffer, 0, CancellationToken.None)).ConfigureAwait(false);
        }
    }

    /// <summary>Echo fails requests when its host dies (its queue dies with it), so a read may
    /// wait for a message that is gone: it gives up after a while. Whatever it does read must be a
    /// message that was written, newer than the last one read.</summary>
    private async Task EchoLaneAsync(DeviceHandle writer, DeviceHandle reader, CancellationToken stop)
    {
        var last = -1;
        var buffer = new byte[64];
        for (var sequence = 0; !stop.IsCancellationRequested; sequence++)
        {
            var write = await TrackAsync(writer.WriteAsync(Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture, $"echo {sequence}")), 0, CancellationToken.None)).ConfigureAwait(false);
            if (write is not { Status: NtStatus.Success })
            {
                // Echo fails fast while it restarts: give it a moment rather than spin.
                await Task.Delay(5, CancellationToken.None).ConfigureAwait(false);
                continue;
            }

            using var patience = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            var read = await TrackAsync(reader.ReadAsync(buffer, cancellationToken: patience.Token)).ConfigureAwait(false);
            if (read is not { Status: NtStatus.Success })
            {
                continue;
            }

            var text = Encoding.ASCII.GetString(buffer, 0, (int)read.Value.Information);
            if (text.StartsWith("echo ", StringComparison.Ordinal) && int.TryParse(text[5..], CultureInfo.InvariantCulture, out var got) && got > last && got <= sequence)
            {
                last = got;
                Interlocked.Increment(ref _verifiedMessages);
            }
            else
            {
                Problem($"echo read \"{text}\" after message {last}, while {sequence} was the newest written");
            }
        }
    }

    private async Task KillerAsync(Action<string>? progress, CancellationToken stop)
    {
        var random = new Random(seed);
        using var timer = new PeriodicTimer(killEvery);
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                var running = kernel.GetDrivers().Where(d => d.State == DriverState.Running).ToList();
                if (running.Count == 0)
                {
                    continue;
                }

                var victim = running[random.Next(running.Count)];
                _killedAt[victim.Name] = Stopwatch.GetTimestamp();
                kernel.KillDriverHost(victim.Name);
                var kills = Interlocked.Increment(ref _kills);
                progress?.Invoke($"kill {kills}: {victim.Name} (PID {victim.ProcessId}); {Interlocked.Read(ref _issued)} requests so far");
            }
        }
        catch (OperationCanceledException)
        {
            // The run is over.
        }
    }

    /// <summary>Recovery time: from the kill to the new instance serving (parked requests re-issued).</summary>
    private void OnEvent(KernelEvent e)
    {
        if (e.Kind == KernelEventKind.DriverRestarted && e.Driver is { } driver && _killedAt.TryRemove(driver, out var killed))
        {
            _recoveries.Add(Stopwatch.GetElapsedTime(killed).TotalMilliseconds);
        }
    }

    private async Task<IoResult?> TrackAsync(ValueTask<IoResult> request)
    {
        Interlocked.Increment(ref _issued);
        try
        {
            var result = await request.AsTask().WaitAsync(LostAfter).ConfigureAwait(false);
            _completed.AddOrUpdate(result.Status, 1, static (_, n) => n + 1);
            return result;
        }
        catch (TimeoutException)
        {
            Interlocked.Increment(ref _lost);
            return null;
        }
    }

    private async Task<bool> WaitForAllRunningAsync()
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            if (kernel.GetDrivers().All(d => d.State is DriverState.Running or DriverState.Quarantined))
            {
                return true;
            }

            await Task.Delay(20).ConfigureAwait(false);
        }

        return false;
    }

    private async Task VerifyDiskAsync(DeviceHandle disk, int?[] expected)
    {
        var back = new byte[BlockSize];
        for (var block = 0; block < expected.Length; block++)
        {
            if (expected[block] is not { } version)
            {
                continue;
            }

            var read = await TrackAsync(disk.ReadAsync(back, (long)block * BlockSize)).ConfigureAwait(false);
            if (read is not { Status: NtStatus.Success })
            {
                Problem($"final read of block {block} failed: {read?.Status.ToString() ?? "lost"}");
                continue;
            }

            Check(back, block, version);
        }
    }

    private async Task<bool> ProbeAsync(DeviceHandle nul, DeviceHandle disk)
    {
        var buffer = new byte[BlockSize];
        var results = new[]
        {
            await TrackAsync(nul.ReadAsync(buffer.AsMemory(0, 512))).ConfigureAwait(false),
            await TrackAsync(disk.ReadAsync(buffer)).ConfigureAwait(false),
        };
        return results.All(r => r is { Status: NtStatus.Success });
    }

    private void Check(byte[] actual, int block, int version)
    {
        if (actual.AsSpan().SequenceEqual(Pattern(block, version)))
        {
            Interlocked.Increment(ref _verifiedBlocks);
        }
        else
        {
            Problem($"block {block} does not hold version {version}");
        }
    }

    private static byte[] Pattern(int block, int version)
    {
        var data = new byte[BlockSize];
        new Random((block * 7919) + version).NextBytes(data);
        return data;
    }

    private static double Percentile(double[] sorted, double p) =>
        sorted.Length == 0 ? 0 : Math.Round(sorted[Math.Clamp((int)Math.Ceiling(p / 100 * sorted.Length) - 1, 0, sorted.Length - 1)], 2);

    private void Problem(string text)
    {
        lock (_problems)
        {
            _problems.Add(text);
        }
    }
}
