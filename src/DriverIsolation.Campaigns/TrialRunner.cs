using System.Diagnostics;
using DriverIsolation.Kernel;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace DriverIsolation.Campaigns;

/// <summary>
/// Runs one trial in this process: boots a fresh kernel with the scenario's drivers in the
/// trial's isolation model and IOMMU mode, the trial's fault in its driver's plan, runs the
/// workload (each client's requests one after another, data checked on read back), lets the
/// watchdog settle, and judges what happened. A fault that takes this process down (fail-fast
/// or a stack overflow in-kernel) never returns here: the campaign runner, in the process above,
/// records that as the system crash it is.
/// </summary>
public static class TrialRunner
{
    private static readonly KernelEventKind[] Detections =
    [
        KernelEventKind.HostExited, KernelEventKind.WatchdogKill, KernelEventKind.ProtocolViolation, KernelEventKind.IrpTimedOut,
        KernelEventKind.CompletionRefused, KernelEventKind.BugCheck, KernelEventKind.IommuFault, KernelEventKind.KernelMemoryCorrupted,
        KernelEventKind.DriverLoadFailed,
    ];

    /// <param name="onEvent">Hears every kernel event on the thread that raised it (the trial
    /// process reports the fault's firing this way before the fault can take it down).</param>
    /// <param name="onBooted">Called once the kernel has booted.</param>
    /// <param name="trace">Records the trial's IRPs and events from boot to shutdown (null: none).</param>
    public static async Task<TrialVerdict> RunAsync(Scenario scenario, TrialSpec spec, ILoggerFactory? loggerFactory = null,
        Action<KernelEvent>? onEvent = null, Action? onBooted = null, TraceRecorder? trace = null, CancellationToken cancellationToken = default)
    {
        var fault = Resolve(scenario.Faults[spec.FaultIndex], spec.Seed);
        var options = new KernelOptions
        {
            IommuMode = spec.Iommu,
            PhysicalMemoryBytes = scenario.Machine.MemoryMb << 20,
        };
        var manifests = scenario.Drivers.Select(d => d.Manifest with
        {
            Isolation = d.PinnedIsolation ?? spec.Isolation,
            Faults = d.Manifest.Name == fault.Driver
                ? [new FaultSpec(0, fault.Type, fault.Trigger.Kind, fault.Trigger.Value, fault.Repeat, CampaignPlan.Mix(spec.Seed, 1),
                    new Dictionary<string, string>(fault.Parameters))]
                : [],
        }).ToList();

        var kernel = new Microkernel(options, loggerFactory ?? NullLoggerFactory.Instance) { Trace = trace };
        try
        {
            return await RunInAsync(kernel, scenario, spec, fault, manifests, options, onEvent, onBooted, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            // A driver thread spinning in-kernel can keep the kernel from shutting down: the
            // verdict is in, so the trial does not wait for it forever.
            try
            {
                await kernel.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // The process that hosts the trial exits anyway once the verdict is out.
            }
        }
    }

    private static async Task<TrialVerdict> RunInAsync(Microkernel kernel, Scenario scenario, TrialSpec spec, ScenarioFault fault, List<DriverManifest> manifests,
        KernelOptions options, Action<KernelEvent>? onEvent, Action? onBooted, CancellationToken cancellationToken)
    {
        if (onEvent is not null)
        {
            kernel.Events.Raised += onEvent;
        }

        string? bootFailure = null;
        try
        {
            await kernel.StartAsync(manifests, null, cancellationToken).WaitAsync(TimeSpan.FromSeconds(60), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is ManifestException or TimeoutException or IoException or InvalidOperationException)
        {
            bootFailure = $"boot failed: {ex.Message}";
        }

        if (bootFailure is null && kernel.BugCheckReason is { } bugCheck)
        {
            bootFailure = $"bug check during boot: {bugCheck}";
        }

        if (bootFailure is null)
        {
            // The system is up when its warm host is: a restart then takes it, as it would on a
            // machine that has been running for a while.
            await WaitForWarmPoolAsync(kernel, options.WarmPoolSize, cancellationToken).ConfigureAwait(false);
            onBooted?.Invoke();
        }

        var outcomes = bootFailure is null && kernel.BugCheckReason is null
            ? await RunWorkloadAsync(kernel, scenario.Workload, scenario.DevicesOf(fault.Driver), spec.Seed, path => PeerOf(scenario, path), cancellationToken).ConfigureAwait(false)
            : [.. scenario.Workload.Devices.Select(d => new DeviceOutcome(d, scenario.DevicesOf(fault.Driver).Contains(d), 0, 0, 0, 0))];
        if (bootFailure is null && kernel.BugCheckReason is null)
        {
            await LetTheWatchdogLookAsync(kernel, fault.Driver, options.HeartbeatPeriod, cancellationToken).ConfigureAwait(false);
        }

        await SettleAsync(kernel, cancellationToken).ConfigureAwait(false);
        if (bootFailure is null && kernel.BugCheckReason is null)
        {
            outcomes = await Task.WhenAll(outcomes.Select(o => o.Faulty
                ? Task.FromResult(o)
                : ProbeAsync(kernel, scenario.Workload, o, spec.Seed, path => PeerOf(scenario, path)))).ConfigureAwait(false);
        }

        // Which devices lost a driver of their stack (restarted, quarantined, failed): in the
        // blast radius even when retries hid it from their clients.
        var failedDrivers = kernel.GetDrivers().Where(d => d.Restarts > 0 || d.State != DriverState.Running).Select(d => d.Name).ToList();
        outcomes = [.. outcomes.Select(o => o with
        {
            DriverFailed = failedDrivers.Any(d => scenario.DevicesOf(d).Contains(o.Device)),
        })];

        var integrity = kernel.VerifyKernelMemory();
        var crash = kernel.BugCheckReason ?? (integrity.Intact ? null : $"kernel memory corrupted: {integrity.Damage[0]}");
        var events = kernel.Events.Snapshot();
        var injected = events.FirstOrDefault(e => e.Kind == KernelEventKind.FaultInjected);
        var detected = injected is null ? null : events.FirstOrDefault(e => e.Time >= injected.Time && Detections.Contains(e.Kind));
        var restarted = injected is null ? null : events.FirstOrDefault(e => e.Time >= injected.Time && e.Kind == KernelEventKind.DriverRestarted && e.Driver == fault.Driver);
        var driver = kernel.GetDrivers().FirstOrDefault(d => d.Name == fault.Driver);
        var booted = bootFailure is null;
        var innocent = outcomes.Where(o => !o.Faulty).ToList();
        return new TrialVerdict
        {
            Index = spec.Index,
            Trial = spec.Trial,
            Seed = spec.Seed,
            Isolation = spec.IsolationName,
            Iommu = spec.IommuName,
            Fault = fault.Type,
            Driver = fault.Driver,
            FaultFired = injected is not null,
            SystemSurvived = booted && crash is null,
            Crash = crash ?? bootFailure,
            Booted = booted,
            SafeMode = kernel.SafeModeReason is not null,
            FaultyDeviceHurt = !booted || crash is not null || outcomes.Any(o => o.Faulty && o.Hurt),
            InnocentDevices = innocent.Count,
            InnocentDevicesHurt = !booted || crash is not null ? innocent.Count : innocent.Count(o => o.Affected),
            IrpsLost = outcomes.Sum(o => o.Lost),
            DataVerified = outcomes.All(o => o.VerifyErrors == 0),
            Restarts = driver?.Restarts ?? 0,
            Quarantined = driver?.State == DriverState.Quarantined,
            IommuFaults = kernel.GetIommu()?.FaultCount ?? 0,
            IrpsFailed = outcomes.Sum(o => o.Failed),
            Hung = events.Any(e => e.Kind == KernelEventKind.IrpTimedOut),
            DetectionMs = detected is null ? null : (detected.Time - injected!.Time).TotalMilliseconds,
            RecoveryMs = restarted is null ? null : (restarted.Time - injected!.Time).TotalMilliseconds,
            Devices = outcomes,
        };
    }

    /// <summary>A <c>random</c> fault becomes one of the request faults, picked by the trial's seed.</summary>
    public static ScenarioFault Resolve(ScenarioFault fault, int seed)
    {
        if (fault.Type != DriverHost.FaultTypes.Random)
        {
            return fault;
        }

        // Faults that act on any driver's requests: not the content update (a load fault), not
        // the DMA faults (they need block hardware).
        string[] pool = [.. DriverHost.FaultTypes.All.Where(t => t != "corrupt-content-update" && !DriverHost.FaultTypes.Dma.Contains(t))];
        return fault with { Type = pool[CampaignPlan.Mix(seed, 2) % pool.Length] };
    }

    /// <summary>The NIC wired to a NIC device, by the scenario's manifests (its name, or null).</summary>
    private static string? PeerOf(Scenario scenario, string path) =>
        scenario.Drivers.SelectMany(d => d.Manifest.Devices)
            .FirstOrDefault(d => d.Name.Equals(path, StringComparison.OrdinalIgnoreCase) || d.Links.Contains(path, StringComparer.OrdinalIgnoreCase))
            ?.Hardware?.Peer;

    private static async Task<IReadOnlyList<DeviceOutcome>> RunWorkloadAsync(Microkernel kernel, WorkloadSpec workload, IReadOnlySet<string> faultyDevices, int seed,
        Func<string, string?> peerOf, CancellationToken cancellationToken)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(TimeSpan.FromMilliseconds(workload.TimeLimitMs));
        var devices = new List<Task<DeviceOutcome>>();
        for (var d = 0; d < workload.Devices.Count; d++)
        {
            var path = workload.Devices[d];
            var info = kernel.GetDevice(path);
            var faulty = faultyDevices.Contains(path);
            var device = d;
            var clients = Enumerable.Range(0, workload.Clients)
                .Select(c => Bounded(path, workload, Task.Run(() => info?.Type == DeviceType.Network && peerOf(path) is { } peer
                    ? RunNicClientAsync(kernel, path, peer, workload, CampaignPlan.Mix(seed, 1000 + (device * 64) + c), limit.Token)
                    : RunClientAsync(kernel, path, info, workload, c, CampaignPlan.Mix(seed, 1000 + (device * 64) + c), limit.Token), CancellationToken.None)))
                .ToList();
            devices.Add(Task.WhenAll(clients).ContinueWith(
                t => t.Result.Aggregate(new DeviceOutcome(path, faulty, 0, 0, 0, 0), (sum, c) => sum with
                {
                    Requests = sum.Requests + c.Requests, Failed = sum.Failed + c.Failed, Lost = sum.Lost + c.Lost, VerifyErrors = sum.VerifyErrors + c.VerifyErrors,
                }),
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default));
        }

        return await Task.WhenAll(devices).ConfigureAwait(false);
    }

    /// <summary>
    /// One last request to an innocent device once the workload is over and the system settled (a
    /// write; on a NIC, one frame to its peer, checked). Damage that outlives the workload (a ring
    /// that a stray DMA overwrote, say) then shows whether or not the workload happened to use the
    /// damaged part before it ended, so the verdict does not depend on that timing.
    /// </summary>
    private static async Task<DeviceOutcome> ProbeAsync(Microkernel kernel, WorkloadSpec workload, DeviceOutcome outcome, int seed, Func<string, string?> peerOf)
    {
        var probe = workload with { Clients = 1, RequestsPerClient = 1, ReadFraction = 0, TimeLimitMs = 5000 };
        using var limit = new CancellationTokenSource(TimeSpan.FromMilliseconds(probe.TimeLimitMs));
        var info = kernel.GetDevice(outcome.Device);
        var result = await Bounded(outcome.Device, probe, Task.Run(() => info?.Type == DeviceType.Network && peerOf(outcome.Device) is { } peer
            ? RunNicClientAsync(kernel, outcome.Device, peer, probe, CampaignPlan.Mix(seed, 3), limit.Token)
            : RunClientAsync(kernel, outcome.Device, info, probe, 0, CampaignPlan.Mix(seed, 3), limit.Token), CancellationToken.None)).ConfigureAwait(false);
        return outcome with
        {
            Requests = outcome.Requests + result.Requests,
            Failed = outcome.Failed + result.Failed,
            Lost = outcome.Lost + result.Lost,
            VerifyErrors = outcome.VerifyErrors + result.VerifyErrors,
        };
    }

    /// <summary>A client whose thread never comes back (an in-kernel driver spinning on the
    /// caller's thread: the call itself does not return) is given up on after the workload's
    /// limit: its request is lost to it.</summary>
    private static async Task<DeviceOutcome> Bounded(string path, WorkloadSpec workload, Task<DeviceOutcome> client)
    {
        try
        {
            return await client.WaitAsync(TimeSpan.FromMilliseconds(workload.TimeLimitMs + 5000)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            return new DeviceOutcome(path, false, 1, 0, 1, 0);
        }
    }

    /// <summary>One client: its requests one after another. On a disk it keeps to its own
    /// stretch of blocks and checks every block it wrote when it reads it back.</summary>
    private static async Task<DeviceOutcome> RunClientAsync(Microkernel kernel, string path, DeviceInfo? info, WorkloadSpec workload, int client, int seed,
        CancellationToken limit)
    {
        var random = new Random(seed);
        int failed = 0, lost = 0, verifyErrors = 0, issued = 0;
        DeviceHandle handle;
        try
        {
            handle = await kernel.OpenAsync(path, limit).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IoException or OperationCanceledException)
        {
            // The device could not even be opened: the client's one request failed.
            return new DeviceOutcome(path, false, 1, 1, 0, 0);
        }

        await using (handle.ConfigureAwait(false))
        {
            var disk = info?.Type == DeviceType.Disk;
            long capacity = 0;
            if (disk)
            {
                var length = new byte[sizeof(long)];
                var result = await handle.DeviceIoControlAsync(Disk.DiskIoControl.GetLengthInfo, ReadOnlyMemory<byte>.Empty, length, limit).ConfigureAwait(false);
                capacity = result.IsSuccess ? BitConverter.ToInt64(length) : 0;
                disk = capacity >= (long)workload.RequestBytes * workload.Clients;
            }

            var blocks = disk ? capacity / workload.RequestBytes / workload.Clients : 0;
            var written = new Dictionary<long, byte[]>();
            var buffer = new byte[workload.RequestBytes];
            var interval = workload.RatePerSecond > 0 ? TimeSpan.FromSeconds(1.0 / workload.RatePerSecond) : TimeSpan.Zero;
            for (var i = 0; i < workload.RequestsPerClient; i++)
            {
                issued = i + 1;
                // A NIC is written to (each write sends a frame to its peer); reading one would
                // wait for a frame nobody sends.
                var read = random.NextDouble() < workload.ReadFraction && info?.Type != DeviceType.Network;
                var block = disk ? (client * blocks) + random.NextInt64(blocks) : 0;
                var offset = block * workload.RequestBytes;
                byte[]? data = null;
                if (!read)
                {
                    data = new byte[workload.RequestBytes];
                    random.NextBytes(data);
                }

                try
                {
                    // No cancellation: a request the kernel never completes must show as lost.
                    var result = await (read ? handle.ReadAsync(buffer, offset, CancellationToken.None).AsTask() : handle.WriteAsync(data, offset, CancellationToken.None).AsTask())
                        .WaitAsync(Timeout.InfiniteTimeSpan, limit).ConfigureAwait(false);
                    if (!result.IsSuccess)
                    {
                        failed++;
                        if (!read)
                        {
                            written.Remove(block); // its contents are unknown now
                        }
                    }
                    else if (read && disk && written.TryGetValue(block, out var expected))
                    {
                        if (result.Information != expected.Length || !buffer.AsSpan().SequenceEqual(expected))
                        {
                            verifyErrors++;
                        }
                    }
                    else if (!read && disk)
                    {
                        written[block] = data!;
                    }
                }
                catch (OperationCanceledException)
                {
                    // The workload's time is up and this request never completed.
                    lost++;
                    issued = i + 1;
                    break;
                }

                if (interval > TimeSpan.Zero)
                {
                    await Task.Delay(interval, CancellationToken.None).ConfigureAwait(false);
                }
            }
        }

        return new DeviceOutcome(path, false, issued, failed, lost, verifyErrors);
    }

    private static async Task WaitForWarmPoolAsync(Microkernel kernel, int size, CancellationToken cancellationToken)
    {
        var until = Stopwatch.GetTimestamp() + (Stopwatch.Frequency * 15);
        while (kernel.WarmPoolProcessIds.Count < size && Stopwatch.GetTimestamp() < until && kernel.BugCheckReason is null
            && kernel.GetDrivers().Any(d => d.Isolation != IsolationModel.InKernel))
        {
            await Task.Delay(10, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>How long a NIC client waits for a frame it sent to arrive at the peer.</summary>
    private static readonly TimeSpan FrameTimeout = TimeSpan.FromSeconds(2);

    /// <summary>Failed frames after which a NIC client takes the link for broken.</summary>
    private const int DroppedFramesLinkDown = 3;

    /// <summary>A client of a NIC: each request posts a receive on the wired peer, sends a frame
    /// (60 to 1514 bytes), and checks the frame arrived whole (when it is the only client: with
    /// several, a frame may land in another client's receive).</summary>
    private static async Task<DeviceOutcome> RunNicClientAsync(Microkernel kernel, string path, string peer, WorkloadSpec workload, int seed, CancellationToken limit)
    {
        var random = new Random(seed);
        int failed = 0, lost = 0, verifyErrors = 0, issued = 0;
        DeviceHandle nic, other;
        try
        {
            nic = await kernel.OpenAsync(path, limit).ConfigureAwait(false);
            other = await kernel.OpenAsync(peer, limit).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IoException or OperationCanceledException)
        {
            return new DeviceOutcome(path, false, 1, 1, 0, 0);
        }

        var dropped = 0;
        await using (nic.ConfigureAwait(false))
        await using (other.ConfigureAwait(false))
        {
            for (var i = 0; i < workload.RequestsPerClient; i++)
            {
                issued = i + 1;
                var frame = new byte[Math.Clamp(workload.RequestBytes, 60, 1514) - random.Next(0, 40)];
                random.NextBytes(frame);
                var buffer = new byte[2048];
                try
                {
                    var receive = other.ReadAsync(buffer, 0, CancellationToken.None).AsTask();
                    var sent = await nic.WriteAsync(frame, 0, CancellationToken.None).AsTask().WaitAsync(Timeout.InfiniteTimeSpan, limit).ConfigureAwait(false);
                    if (!sent.IsSuccess)
                    {
                        other.CancelIo();
                    }

                    var received = await ReceiveAsync(other, receive, limit).ConfigureAwait(false);
                    if (!sent.IsSuccess || received is not { IsSuccess: true })
                    {
                        // Not sent, or sent and never received (dropped). A link that fails a
                        // few frames is broken: the client stops, its remaining frames failed
                        // (waiting out every failure would run into the workload's time limit,
                        // and what was lost would depend on how far it got).
                        failed++;
                        if (++dropped == DroppedFramesLinkDown)
                        {
                            failed += workload.RequestsPerClient - issued;
                            issued = workload.RequestsPerClient;
                            break;
                        }
                    }
                    else if (workload.Verify && workload.Clients == 1
                        && (received.Value.Information != frame.Length || !buffer.AsSpan(0, frame.Length).SequenceEqual(frame)))
                    {
                        verifyErrors++;
                    }
                }
                catch (OperationCanceledException)
                {
                    lost++;
                    break;
                }
            }
        }

        return new DeviceOutcome(path, false, issued, failed, lost, verifyErrors);
    }

    /// <summary>The receive of a sent frame; null if no frame came within
    /// <see cref="FrameTimeout"/> (the receive is cancelled: a dropped frame is a failure of the
    /// link, not a request the kernel lost).</summary>
    private static async Task<IoResult?> ReceiveAsync(DeviceHandle other, Task<IoResult> receive, CancellationToken limit)
    {
        try
        {
            return await receive.WaitAsync(FrameTimeout, limit).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            other.CancelIo();
            try
            {
                // A driver that does not cancel a posted receive keeps it: the client moves on.
                await receive.WaitAsync(FrameTimeout, limit).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
            }

            return null;
        }
    }

    /// <summary>
    /// The watchdog checks a host's memory and handles once a heartbeat period. A fault whose only
    /// symptom is one it samples (a leak) fires during a workload that may end well within one
    /// period; judged at once, the trial would say the watchdog let it through when it had not yet
    /// looked. So when the fault fired and its driver still runs in a host, the trial waits for
    /// the watchdog's next check of that host, and, if the check killed it, for the driver to be
    /// restarted, quarantined or given up on. Not when the instance the fault last fired in is
    /// gone already (the kernel restarted the driver since): the kernel has acted on the fault,
    /// and a check of the new instance would say nothing about it.
    /// </summary>
    private static async Task LetTheWatchdogLookAsync(Microkernel kernel, string faultyDriver, TimeSpan? period, CancellationToken cancellationToken)
    {
        if (period is not { } beat
            || kernel.GetDrivers().FirstOrDefault(d => d.Name == faultyDriver) is not { State: DriverState.Running, Isolation: not IsolationModel.InKernel } before
            || !FiredInTheRunningInstance(kernel.Events.Snapshot(), faultyDriver))
        {
            return;
        }

        try
        {
            if (await kernel.WatchdogCheckAsync(faultyDriver, cancellationToken).WaitAsync(beat + TimeSpan.FromSeconds(5), cancellationToken).ConfigureAwait(false) is null)
            {
                return; // The host passed.
            }
        }
        catch (TimeoutException)
        {
            return; // Judged as it stands: the verdict says what happened within the bound.
        }

        // The host was killed (or is gone): wait until the kernel has taken note (the driver is no
        // longer the instance that was running); the settling that follows waits out the restart.
        var until = Stopwatch.GetTimestamp() + (Stopwatch.Frequency * 15);
        while (Stopwatch.GetTimestamp() < until
            && kernel.GetDrivers().FirstOrDefault(d => d.Name == faultyDriver) is { State: DriverState.Running } now
            && now.Restarts == before.Restarts && now.ProcessId == before.ProcessId)
        {
            await Task.Delay(20, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>True if the driver's fault fired and the driver has not been restarted since it
    /// last did (the kernel's events are in the order they happened).</summary>
    internal static bool FiredInTheRunningInstance(IReadOnlyList<KernelEvent> events, string driver)
    {
        var fired = -1;
        for (var i = 0; i < events.Count; i++)
        {
            if (events[i].Driver == driver && events[i].Kind == KernelEventKind.FaultInjected)
            {
                fired = i;
            }
        }

        for (var i = fired + 1; fired >= 0 && i < events.Count; i++)
        {
            if (events[i].Driver == driver && events[i].Kind == KernelEventKind.DriverRestarted)
            {
                return false;
            }
        }

        return fired >= 0;
    }

    /// <summary>Waits (bounded) until no driver is between states: restarted, quarantined or failed.</summary>
    private static async Task SettleAsync(Microkernel kernel, CancellationToken cancellationToken)
    {
        var until = Stopwatch.GetTimestamp() + (Stopwatch.Frequency * 15);
        while (Stopwatch.GetTimestamp() < until && kernel.BugCheckReason is null
            && kernel.GetDrivers().Any(d => d.State is DriverState.Restarting or DriverState.Loading))
        {
            await Task.Delay(20, cancellationToken).ConfigureAwait(false);
        }
    }
}
