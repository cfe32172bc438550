using Microsoft.Extensions.Logging;

namespace DriverIsolation.DriverHost;

/// <summary>The logger a driver in a host process gets: lines at or above the threshold travel to
/// the kernel as Log frames, where they are logged under the name of the driver the id names.</summary>
internal sealed class ForwardingLogger(IKernelLink link, int driverId, LogLevel minimum) : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= minimum && logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel))
        {
            return;
        }

        var text = formatter(state, exception);
        if (exception is not null)
        {
            text = $"{text}: {exception}";
        }

        link.Log(driverId, logLevel, text);
    }
}
