using System.Collections.Concurrent;

namespace DriverIsolation.Kernel;

/// <summary>
/// Idle driver hosts, already started and past the handshake, kept so that a restart does not
/// pay for a process start (tens of milliseconds for a .NET host on an idle machine, far more on
/// a busy one). A replacement is started in the background once the restart that took one is done.
/// </summary>
internal sealed class WarmPool(HostLauncher launcher, int size, Action<ProcessHostChannel, string> onExited, CancellationToken stopping)
{
    private readonly ConcurrentQueue<ProcessHostChannel> _idle = new();
    private int _starting;
    private int _started;

    public IReadOnlyList<int> ProcessIds => [.. _idle.Where(h => h.IsAlive).Select(h => h.ProcessId)];

    /// <summary>Starts hosts until the pool holds <c>size</c> (counting those on their way).</summary>
    public void Fill()
    {
        while (!stopping.IsCancellationRequested && Volatile.Read(ref _starting) + _idle.Count < size)
        {
            Interlocked.Increment(ref _starting);
            _ = StartOneAsync();
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

    public async Task DisposeAsync()
    {
        while (_idle.TryDequeue(out var host))
        {
            await host.DisposeAsync().ConfigureAwait(false);
        }
    }

    private async Task StartOneAsync()
    {
        try
        {
            var host = await launcher.StartAsync($"pool-{Interlocked.Increment(ref _started)}", IsolationModel.Process, onExited, stopping).ConfigureAwait(false);
            if (stopping.IsCancellationRequested)
            {
                await host.DisposeAsync().ConfigureAwait(false);
                return;
            }

            _idle.Enqueue(host);
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
