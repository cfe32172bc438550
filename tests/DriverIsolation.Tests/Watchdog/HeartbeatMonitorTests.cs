using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

public sealed class HeartbeatMonitorTests
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(1);
    private readonly FakeTimeProvider _time = new();
    private readonly List<long> _pings = [];
    private readonly List<string> _kills = [];

    [Fact]
    public void AnsweredPings_NeverKill()
    {
        using var monitor = Monitor(memoryBudget: null);

        for (var i = 1; i <= 10; i++)
        {
            _time.Advance(Period);
            monitor.OnPong(i, 1);
        }

        Assert.Equal(Enumerable.Range(1, 10).Select(i => (long)i), _pings);
        Assert.Empty(_kills);
    }

    [Fact]
    public void TwoPingsUnanswered_KillsAtTheNextPeriodAndNotBefore()
    {
        using var monitor = Monitor(memoryBudget: null);

        _time.Advance(Period);
        _time.Advance(Period);
        Assert.Empty(_kills);
        _time.Advance(Period - TimeSpan.FromTicks(1));
        Assert.Empty(_kills);
        _time.Advance(TimeSpan.FromTicks(1));

        Assert.Equal("hung: 2 heartbeats unanswered (period 1000 ms)", Assert.Single(_kills));
        Assert.Equal([1L, 2L], _pings);
        _time.Advance(Period * 5);
        Assert.Single(_kills);
    }

    [Fact]
    public void LateAnswer_ResetsTheCount()
    {
        using var monitor = Monitor(memoryBudget: null);

        _time.Advance(Period);
        _time.Advance(Period);
        monitor.OnPong(2, 1);
        _time.Advance(Period);
        _time.Advance(Period);

        Assert.Empty(_kills);
        _time.Advance(Period);
        Assert.Single(_kills);
    }

    [Fact]
    public void WorkingSetOverBudget_KillsOnceWithTheNumbers()
    {
        using var monitor = Monitor(memoryBudget: 100L * 1024 * 1024);

        _time.Advance(Period);
        monitor.OnPong(1, 99L * 1024 * 1024);
        Assert.Empty(_kills);
        _time.Advance(Period);
        monitor.OnPong(2, 101L * 1024 * 1024);
        monitor.OnPong(2, 150L * 1024 * 1024);

        Assert.Equal("over its memory budget: working set 101 MiB > 100 MiB", Assert.Single(_kills));
    }

    [Fact]
    public void PongForAPingNeverSent_IsIgnored()
    {
        using var monitor = Monitor(memoryBudget: null);

        monitor.OnPong(1_000, 1);
        _time.Advance(Period);
        _time.Advance(Period);
        _time.Advance(Period);

        Assert.Single(_kills);
    }

    [Fact]
    public async Task NextCheck_CompletesAtTheNextPeriod_WithTheKillReasonIfItKilled()
    {
        var resident = 50L * 1024 * 1024;
        using var monitor = new HeartbeatMonitor(_time, Period, 100L * 1024 * 1024, _pings.Add, _kills.Add, measure: () => new HostUsage(resident, 10));

        var first = monitor.NextCheckAsync();
        _time.Advance(Period - TimeSpan.FromTicks(1));
        Assert.False(first.IsCompleted);
        _time.Advance(TimeSpan.FromTicks(1));
        Assert.Null(await first.Bounded());

        var second = monitor.NextCheckAsync();
        Assert.False(second.IsCompleted);
        resident = 150L * 1024 * 1024;
        _time.Advance(Period);

        Assert.Equal("over its memory budget: resident 150 MiB > 100 MiB", await second.Bounded());
        Assert.Equal("over its memory budget: resident 150 MiB > 100 MiB", await monitor.NextCheckAsync().Bounded());
        Assert.Single(_kills);
    }

    [Fact]
    public async Task NextCheck_KilledByAPong_OrDisposed_CompletesWithWhy()
    {
        var monitor = Monitor(memoryBudget: 100L * 1024 * 1024);
        var check = monitor.NextCheckAsync();
        monitor.OnPong(0, 101L * 1024 * 1024);
        Assert.Equal("over its memory budget: working set 101 MiB > 100 MiB", await check.Bounded());
        monitor.Dispose();

        using var other = Monitor(memoryBudget: null);
        var pending = other.NextCheckAsync();
        other.Dispose();
        Assert.Equal("the host is gone", await pending.Bounded());
        Assert.Equal("the host is gone", await other.NextCheckAsync().Bounded());
    }

    /// <summary>A check asked for while a tick is measuring is the next tick's: what it reports
    /// was measured after it was asked for.</summary>
    [Fact]
    public async Task NextCheck_AskedDuringATick_IsTheNextTicks()
    {
        Task<string?>? askedDuringTick = null;
        HeartbeatMonitor? monitor = null;
        using var created = new HeartbeatMonitor(_time, Period, null, _pings.Add, _kills.Add, measure: () =>
        {
            askedDuringTick ??= monitor!.NextCheckAsync();
            return new HostUsage(1, 1);
        });
        monitor = created;

        _time.Advance(Period);
        Assert.NotNull(askedDuringTick);
        Assert.False(askedDuringTick.IsCompleted);
        _time.Advance(Period);
        Assert.Null(await askedDuringTick.Bounded());
    }

    private HeartbeatMonitor Monitor(long? memoryBudget) =>
        new(_time, Period, memoryBudget, _pings.Add, _kills.Add);
}
