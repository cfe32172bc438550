using System.Threading.Channels;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>A fake clock that reports every timer created on it, so a test can wait until code
/// under test is actually waiting before it advances time (no race, no sleep).</summary>
public sealed class ObservableTimeProvider : FakeTimeProvider
{
    public Channel<TimeSpan> TimersCreated { get; } = Channel.CreateUnbounded<TimeSpan>();

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = base.CreateTimer(callback, state, dueTime, period);
        TimersCreated.Writer.TryWrite(dueTime);
        return timer;
    }
}
