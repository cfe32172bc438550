using Polly;
using Polly.Retry;

namespace DriverIsolation.Kernel;

/// <summary>
/// Keeps one driver alive, as MINIX's reincarnation server does: when an instance fails it is
/// restarted at once; if the new one fails quickly too, the next restart waits, exponentially
/// longer with jitter and a cap. An instance that lived through the quiet period was healthy,
/// and the backoff starts over. More failures than the policy allows within its window
/// quarantine the driver. The backoff is a Polly retry pipeline whose "operation" is one
/// instance's life; all waiting goes through the injected <see cref="TimeProvider"/>.
/// </summary>
internal sealed class DriverSupervisor
{
    private readonly IDriverLifecycle _driver;
    private readonly RecoveryPolicy _policy;
    private readonly TimeProvider _time;
    private readonly FailureWindow _failures;
    private readonly ResiliencePipeline _pipeline;
    private bool _instanceLoaded;

    public DriverSupervisor(IDriverLifecycle driver, RecoveryPolicy policy, TimeProvider time, Func<double>? randomizer = null, bool useJitter = true)
    {
        _driver = driver;
        _policy = policy;
        _time = time;
        _failures = new FailureWindow(policy.MaxFailures, policy.FailureWindow);
        var retry = new RetryStrategyOptions
        {
            ShouldHandle = new PredicateBuilder().Handle<InstanceFailedException>(),
            MaxRetryAttempts = int.MaxValue,
            BackoffType = DelayBackoffType.Exponential,
            UseJitter = useJitter,
            Delay = policy.BackoffBase,
            MaxDelay = policy.BackoffMax,

            // The first restart after a failure is immediate; Polly's exponential backoff (with
            // jitter, capped) decides the ones after it.
            DelayGenerator = static args => new ValueTask<TimeSpan?>(args.AttemptNumber == 0 ? TimeSpan.Zero : null),
            OnRetry = args =>
            {
                RestartScheduled?.Invoke(new RestartSchedule(args.AttemptNumber, args.RetryDelay, _failures.Count));
                return default;
            },
        };
        if (randomizer is not null)
        {
            retry.Randomizer = randomizer;
        }

        _pipeline = new ResiliencePipelineBuilder { TimeProvider = time }.AddRetry(retry).Build();
    }

    /// <summary>Raised when a restart is scheduled, before its delay starts.</summary>
    public event Action<RestartSchedule>? RestartScheduled;

    /// <summary>Supervises until the driver is quarantined, given up on, or the kernel stops.
    /// <paramref name="instanceLoaded"/> says the loader started the first instance: the
    /// supervisor waits on it even if it has already died (its failure then goes through the
    /// policy like any other, so a driver with restarting off is not restarted), instead of
    /// starting one.</summary>
    public async Task RunAsync(bool instanceLoaded, CancellationToken cancellationToken)
    {
        _instanceLoaded = instanceLoaded;
        try
        {
            while (true)
            {
                await _pipeline.ExecuteAsync(LiveOnceAsync, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (SupervisionEndedException)
        {
            // Quarantined or given up on: nothing more to do.
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The kernel is stopping.
        }
    }

    /// <summary>One instance's life: start it if it is not running, wait for it to fail, and
    /// decide what its failure means.</summary>
    private async ValueTask LiveOnceAsync(CancellationToken cancellationToken)
    {
        if (_instanceLoaded)
        {
            _instanceLoaded = false;
        }
        else if (!_driver.IsRunning)
        {
            try
            {
                await _driver.RestartAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (DriverStartException ex)
            {
                Failed($"restart failed: {ex.Message}");
                throw new InstanceFailedException();
            }
        }

        var started = _time.GetUtcNow();
        var reason = await _driver.WaitForFailureAsync(cancellationToken).ConfigureAwait(false);
        Failed(reason);
        if (_time.GetUtcNow() - started < _policy.QuietPeriod)
        {
            throw new InstanceFailedException();
        }

        // It had been healthy for the quiet period: end this execution, and the next one
        // restarts at once with the backoff reset.
    }

    private void Failed(string reason)
    {
        if (_driver.QuarantineDemand is { } demand)
        {
            _failures.RecordAndCheck(_time.GetUtcNow());
            _driver.Quarantine(demand);
            throw new SupervisionEndedException();
        }

        if (_failures.RecordAndCheck(_time.GetUtcNow()))
        {
            _driver.Quarantine($"{_failures.Count} failures within {_policy.FailureWindow} (the limit is {_policy.MaxFailures}); last: {reason}");
            throw new SupervisionEndedException();
        }

        if (!_policy.Restart)
        {
            _driver.GiveUp($"restarting is off for this driver; it failed: {reason}");
            throw new SupervisionEndedException();
        }
    }

    private sealed class InstanceFailedException : Exception;

    private sealed class SupervisionEndedException : Exception;
}

/// <summary>A restart the supervisor scheduled: the zero-based retry attempt, the delay before
/// it, and the failures counted in the window so far.</summary>
internal readonly record struct RestartSchedule(int Attempt, TimeSpan Delay, int RecentFailures);
