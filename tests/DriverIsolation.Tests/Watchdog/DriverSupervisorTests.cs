using System.Threading.Channels;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests;

/// <summary>The supervisor's policy, with a fake driver and a fake clock: no processes, exact.</summary>
public sealed class DriverSupervisorTests
{
    private static readonly TimeSpan Tick = TimeSpan.FromTicks(1);

    [Fact]
    public async Task Crashes_FirstRestartAtOnceThenExponentialBackoffCapped()
    {
        var (time, driver, supervisor, schedules) = Start(new RecoveryPolicy
        {
            MaxFailures = 100,
            BackoffBase = TimeSpan.FromMilliseconds(10),
            BackoffMax = TimeSpan.FromMilliseconds(100),
        }, useJitter: false);

        // Crash 1: restarted at once.
        driver.Crash();
        Assert.Equal(TimeSpan.Zero, (await schedules.Reader.ReadAsync().AsTask().Bounded()).Delay);
        await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();

        // Crashes 2..6: 20, 40, 80, then capped at 100 ms; nothing happens a tick before each.
        foreach (var expected in new[] { 20, 40, 80, 100, 100 })
        {
            driver.Crash();
            Assert.Equal(TimeSpan.FromMilliseconds(expected), (await schedules.Reader.ReadAsync().AsTask().Bounded()).Delay);
            Assert.Equal(TimeSpan.FromMilliseconds(expected), await time.TimersCreated.Reader.ReadAsync().AsTask().Bounded());
            time.Advance(TimeSpan.FromMilliseconds(expected) - Tick);
            Assert.False(driver.Restarts.Reader.TryRead(out _));
            time.Advance(Tick);
            await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();
        }

        Assert.Equal(6, driver.RestartCount);
        await supervisor.StopAsync();
    }

    [Fact]
    public async Task Crashes_MoreThanMaxFailuresInTheWindow_QuarantinesAtExactlyTheLimit()
    {
        var (time, driver, supervisor, schedules) = Start(new RecoveryPolicy { MaxFailures = 3, FailureWindow = TimeSpan.FromMinutes(1) }, useJitter: false);

        for (var failure = 1; failure <= 3; failure++)
        {
            driver.Crash();
            var schedule = await schedules.Reader.ReadAsync().AsTask().Bounded();
            Assert.Equal(failure, schedule.RecentFailures);
            if (schedule.Delay > TimeSpan.Zero)
            {
                await time.TimersCreated.Reader.ReadAsync().AsTask().Bounded();
                time.Advance(schedule.Delay);
            }

            await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();
            Assert.Null(driver.QuarantineReason);
        }

        driver.Crash();
        var reason = await driver.Quarantined.Task.Bounded();

        Assert.StartsWith("4 failures within 00:01:00 (the limit is 3)", reason, StringComparison.Ordinal);
        Assert.Equal(3, driver.RestartCount);
        await supervisor.Finished.Bounded();
    }

    [Fact]
    public async Task QuietPeriodAndWindowPassed_CountAndBackoffStartOver()
    {
        var (time, driver, supervisor, schedules) = Start(new RecoveryPolicy
        {
            MaxFailures = 2,
            FailureWindow = TimeSpan.FromMinutes(1),
            QuietPeriod = TimeSpan.FromSeconds(30),
            BackoffBase = TimeSpan.FromMilliseconds(10),
        }, useJitter: false);

        driver.Crash();
        Assert.Equal(TimeSpan.Zero, (await schedules.Reader.ReadAsync().AsTask().Bounded()).Delay);
        await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();
        driver.Crash();
        var second = await schedules.Reader.ReadAsync().AsTask().Bounded();
        Assert.Equal(TimeSpan.FromMilliseconds(20), second.Delay);
        await time.TimersCreated.Reader.ReadAsync().AsTask().Bounded();
        time.Advance(second.Delay);
        await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();

        // A healthy minute: both failures age out of the window and the backoff resets. (Once the
        // supervisor watches the third instance: it takes the instance's start time first.)
        await WatchedAsync(driver, 3);
        time.Advance(TimeSpan.FromMinutes(1));
        driver.Crash();
        await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();
        driver.Crash();
        var afterQuiet = await schedules.Reader.ReadAsync().AsTask().Bounded();

        Assert.Equal(TimeSpan.Zero, afterQuiet.Delay);
        Assert.Equal(2, afterQuiet.RecentFailures);
        await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();
        Assert.Null(driver.QuarantineReason);
        await supervisor.StopAsync();
    }

    [Fact]
    public async Task Jitter_WithTheSameRandomSource_GivesTheSameDelaysWithinTheCap()
    {
        var policy = new RecoveryPolicy { MaxFailures = 100, BackoffBase = TimeSpan.FromMilliseconds(10), BackoffMax = TimeSpan.FromMilliseconds(500) };

        var first = await DelaysAsync(policy, new Random(3));
        var second = await DelaysAsync(policy, new Random(3));

        Assert.Equal(first, second);
        Assert.Equal(TimeSpan.Zero, first[0]);
        Assert.All(first.Skip(1), d => Assert.InRange(d, TimeSpan.FromTicks(1), policy.BackoffMax));
        Assert.NotEqual([20, 40, 80, 160, 320], first.Skip(1).Select(d => (int)d.TotalMilliseconds));
    }

    [Fact]
    public async Task RestartOff_FirstFailureGivesUp()
    {
        var (_, driver, supervisor, _) = Start(new RecoveryPolicy { Restart = false }, useJitter: false);

        driver.Crash();

        Assert.Contains("restarting is off", await driver.GaveUp.Task.Bounded(), StringComparison.Ordinal);
        await supervisor.Finished.Bounded();
        Assert.Equal(0, driver.RestartCount);
    }

    /// <summary>The loaded instance died before its supervisor began to watch it (a host killed
    /// for a protocol violation right after its driver loaded): with restarting off, it is given
    /// up on, never restarted.</summary>
    [Fact]
    public async Task RestartOff_InstanceDeadBeforeSupervision_GivesUpWithoutRestarting()
    {
        var (_, driver, supervisor, schedules) = Start(new RecoveryPolicy { Restart = false }, useJitter: false, crashBeforeSupervision: true);

        Assert.Contains("restarting is off", await driver.GaveUp.Task.Bounded(), StringComparison.Ordinal);
        await supervisor.Finished.Bounded();
        Assert.Equal(0, driver.RestartCount);
        Assert.False(schedules.Reader.TryRead(out _));
    }

    /// <summary>With restarting on, the same early death is counted as a failure and restarted at once.</summary>
    [Fact]
    public async Task InstanceDeadBeforeSupervision_IsCountedAndRestartedAtOnce()
    {
        var (_, driver, supervisor, schedules) = Start(new RecoveryPolicy { MaxFailures = 3 }, useJitter: false, crashBeforeSupervision: true);

        var schedule = await schedules.Reader.ReadAsync().AsTask().Bounded();
        Assert.Equal(new RestartSchedule(0, TimeSpan.Zero, 1), schedule);
        Assert.Equal(1, await driver.Restarts.Reader.ReadAsync().AsTask().Bounded());
        await supervisor.StopAsync();
    }

    /// <summary>A supervisor given a driver with no instance (re-enabled, or recovering at boot)
    /// starts one at once, without counting a failure or scheduling a restart.</summary>
    [Fact]
    public async Task NoInstanceLoaded_StartsOneAtOnce()
    {
        var (_, driver, supervisor, schedules) = Start(new RecoveryPolicy { Restart = false }, useJitter: false, crashBeforeSupervision: true, instanceLoaded: false);

        Assert.Equal(1, await driver.Restarts.Reader.ReadAsync().AsTask().Bounded());
        Assert.False(schedules.Reader.TryRead(out _));
        Assert.False(driver.GaveUp.Task.IsCompleted);
        await supervisor.StopAsync();
    }

    /// <summary>Until the supervisor has begun to watch the <paramref name="instance"/>-th instance.</summary>
    private static async Task WatchedAsync(FakeDriver driver, int instance)
    {
        while (await driver.Watches.Reader.ReadAsync().AsTask().Bounded() < instance)
        {
        }
    }

    private static async Task<List<TimeSpan>> DelaysAsync(RecoveryPolicy policy, Random random)
    {
        var (time, driver, supervisor, schedules) = Start(policy, useJitter: true, random.NextDouble);
        var delays = new List<TimeSpan>();
        for (var i = 0; i < 6; i++)
        {
            driver.Crash();
            var schedule = await schedules.Reader.ReadAsync().AsTask().Bounded();
            delays.Add(schedule.Delay);
            if (schedule.Delay > TimeSpan.Zero)
            {
                await time.TimersCreated.Reader.ReadAsync().AsTask().Bounded();
                time.Advance(schedule.Delay);
            }

            await driver.Restarts.Reader.ReadAsync().AsTask().Bounded();
        }

        await supervisor.StopAsync();
        return delays;
    }

    private static (ObservableTimeProvider Time, FakeDriver Driver, Running Supervisor, Channel<RestartSchedule> Schedules) Start(
        RecoveryPolicy policy, bool useJitter, Func<double>? randomizer = null, bool crashBeforeSupervision = false, bool instanceLoaded = true)
    {
        var time = new ObservableTimeProvider();
        var driver = new FakeDriver();
        if (crashBeforeSupervision)
        {
            driver.Crash();
        }

        var supervisor = new DriverSupervisor(driver, policy, time, randomizer, useJitter);
        var schedules = Channel.CreateUnbounded<RestartSchedule>();
        supervisor.RestartScheduled += s => schedules.Writer.TryWrite(s);
        var cancel = new CancellationTokenSource();
        return (time, driver, new Running(supervisor.RunAsync(instanceLoaded, cancel.Token), cancel), schedules);
    }

    private sealed record Running(Task Finished, CancellationTokenSource Cancel)
    {
        public async Task StopAsync()
        {
            await Cancel.CancelAsync();
            await Finished.Bounded();
            Cancel.Dispose();
        }
    }

    /// <summary>A driver whose instances fail when the test says so.</summary>
    private sealed class FakeDriver : IDriverLifecycle
    {
        private readonly Lock _gate = new();
        private TaskCompletionSource<string> _failure = New<string>();

        public string Name => "fake";

        public bool IsRunning { get; private set; } = true;

        public int RestartCount { get; private set; }

        public Channel<int> Restarts { get; } = Channel.CreateUnbounded<int>();

        public TaskCompletionSource<string> Quarantined { get; } = New<string>();

        public TaskCompletionSource<string> GaveUp { get; } = New<string>();

        public string? QuarantineReason => Quarantined.Task.IsCompleted ? Quarantined.Task.Result : null;

        public void Crash()
        {
            lock (_gate)
            {
                IsRunning = false;
                _failure.TrySetResult("crashed");
            }
        }

        public Task RestartAsync(CancellationToken cancellationToken)
        {
            lock (_gate)
            {
                _failure = New<string>();
                IsRunning = true;
                RestartCount++;
            }

            Restarts.Writer.TryWrite(RestartCount);
            return Task.CompletedTask;
        }

        /// <summary>The count of instances watched so far, each time the supervisor begins to watch one.</summary>
        public Channel<int> Watches { get; } = Channel.CreateUnbounded<int>();

        private int _watched;

        public Task<string> WaitForFailureAsync(CancellationToken cancellationToken)
        {
            lock (_gate)
            {
                Watches.Writer.TryWrite(++_watched);
                return _failure.Task.WaitAsync(cancellationToken);
            }
        }

        public void Quarantine(string reason) => Quarantined.TrySetResult(reason);

        public void GiveUp(string reason) => GaveUp.TrySetResult(reason);

        private static TaskCompletionSource<T> New<T>() => new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
