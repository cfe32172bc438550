using System.Collections.Concurrent;

namespace DriverIsolation.Kernel;

/// <summary>
/// Idle driver hosts, already started and past the handshake, kept so that a restart does not
/// pay for a process start (tens of milliseconds for a .NET host on an idle machine, far more on
/// a busy one). With <see cref="KernelOptions.PrepareWarmHosts"/> each is also told to load the
/// drivers it may be taken for ahead of time (<see cref="Protocol.PrepareDriver"/>), so a restart
/// does not pay for that either. A replacement
/// is started in the background once the restart that took one is done.
/// </summary>
internal sealed class WarmPool(HostLauncher launcher, int size, Action<ProcessHostChannel, string> onExited, CancellationToken stopping,
    Func<IReadOnlyList<Protocol.PrepareDriver>>? preparations = null)
{
    private readonly ConcurrentQueue<ProcessHostChannel> _idle = new();
    private readonly ConcurrentDictionary<Task, byte> _startsInProgress = new();
    private int _starting;
    private int _started;

    public IReadOnlyList<int> ProcessIds => [.. _idle.Where(h => h.IsAlive).Select(h => h.ProcessId)];

    /// <summary>Starts hosts until the pool holds <c>size</c> (counting those on their way).</summary>
    public void Fill()
    {
        while (!stopping.IsCancellationRequested && Volatile.Read(ref _starting) + _idle.Count < size)
        {
            Interlocked.Increment(ref _starting);
            var start = StartOneAsync();
            _startsInProgress.TryAdd(start, 0);
            _ = start.ContinueWith(static (t, s) => ((ConcurrentDictionary<Task, byte>)s!).TryRemove(t, out _), _startsInProgress,
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    /// <summary>An idle live host, renamed for its driver, or null if none is ready. The caller
    /// calls <see cref="Fill"/> when its restart is done: a process start competing with the
    /// restart for the CPU would slow the restart down.</summary>
    public ProcessHostChannel? TryTake(string name)
    {
        while (_idle.TryDequeue(out var host))
        {
            if (host.IsAlive)
            {
                host.Name = name;
                return host;
            }
        }

        return null;
    }

    /// <summary>Waits for the starts in progress (the kernel is stopping: each disposes its host),
    /// then disposes the idle hosts. A start cut short must not outlive the kernel: a host being
    /// killed while its parent exits can be left behind stopped.</summary>
    public async Task DisposeAsync()
    {
        try
        {
            await Task.WhenAll(_startsInProgress.Keys).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // A start that hangs past its own timeout: its launcher kills the process.
        }

        while (_idle.TryDequeue(out var host))
        {
            await host.DisposeAsync().ConfigureAwait(false);
        }
    }

    private async Task StartOneAsync()
    {
        try
        {
            // Ready before it is announced (a HostStarted event for pool-N means it can be taken):
            // rehearsed before it connected (HostRehearsal: a restart's path compiled), told what to
            // load ahead of time, so that a restart in it skips the loading, and idle.
            await launcher.StartAsync($"pool-{Interlocked.Increment(ref _started)}", IsolationModel.Process, onExited, stopping, async host =>
            {
                if (preparations is not null)
                {
                    await host.PrepareAsync(preparations(), TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);
                }

                _idle.Enqueue(host);
            }, rehearse: true).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is HostStartException or OperationCanceledException)
        {
            // No warm host this time: a restart spawns one itself.
        }
        finally
        {
            Interlocked.Decrement(ref _starting);
        }
    }
}
