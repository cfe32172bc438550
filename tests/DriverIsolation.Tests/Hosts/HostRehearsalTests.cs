using DriverIsolation.DriverHost;
using DriverIsolation.Kernel;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.Tests;

/// <summary>
/// A warm-pool host rehearses a restart before it connects (HostRehearsal): its own server, on a
/// real pipe, serves a driver loaded from an assembly file and requests of every major function,
/// checking every reply. Here in this process, in both dispatch modes; and through a kernel,
/// whose pool host reports its rehearsal after the handshake and is then taken for a restart.
/// </summary>
[Collection("processes")]
public sealed class HostRehearsalTests
{
    private const int MajorFunctions = 7;

    [Theory]
    [InlineData(HostDispatch.Pool)]
    [InlineData(HostDispatch.Inline)]
    public async Task Rehearsal_ServesEveryRequestItSends(HostDispatch dispatch)
    {
        var result = await HostRehearsal.RunAsync(dispatch, inlineStall: null, TimeSpan.FromSeconds(30)).Bounded();

        Assert.Equal(HostRehearsal.Rounds * MajorFunctions, result.Requests);
    }

    [Fact]
    public async Task PoolHost_RehearsesBeforeItConnects_ThenServesTheRestartItIsTakenFor()
    {
        using var logs = new CapturingLoggerProvider("rehearsed a restart before connecting");
        using var loggerFactory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Debug).AddProvider(logs));
        await using var kernel = new Microkernel(new KernelOptions { WarmPoolSize = 1, HeartbeatPeriod = null }, loggerFactory);
        await kernel.StartAsync([TestManifests.Sample("Null") with { Recovery = new RecoveryPolicy { InFlight = InFlightPolicy.Retry } }], IsolationModel.Process).Bounded();

        var line = await logs.Matched.Bounded();
        Assert.Matches($@"^rehearsed a restart before connecting: {HostRehearsal.Rounds * MajorFunctions} requests served in \d+ ms$", line.Message);
        Assert.StartsWith("DriverIsolation.Host.pool-", line.Category, StringComparison.Ordinal);

        await using var nul = await kernel.OpenAsync(@"\Device\Null").Bounded();
        // Announced once it is idle in the pool, ready to be taken.
        var pooled = await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.HostStarted && e.Driver == "pool-1").Bounded();
        kernel.KillDriverHost("Null");
        var read = await nul.ReadAsync(new byte[16]).Bounded();

        Assert.Equal(NtStatus.Success, read.Status);
        var restarted = await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();
        Assert.Matches($"^{pooled.Detail}[;,]", restarted.Detail);
    }

    private sealed class CapturingLoggerProvider(string prefix) : ILoggerProvider
    {
        private readonly TaskCompletionSource<(string Category, string Message)> _matched = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<(string Category, string Message)> Matched => _matched.Task;

        public ILogger CreateLogger(string categoryName) => new Capturing(this, categoryName);

        public void Dispose()
        {
        }

        private sealed class Capturing(CapturingLoggerProvider owner, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                var message = formatter(state, exception);
                var start = message.IndexOf(owner.Prefix, StringComparison.Ordinal);
                if (start >= 0)
                {
                    owner._matched.TrySetResult((category, message[start..]));
                }
            }
        }

        private string Prefix => prefix;
    }
}
