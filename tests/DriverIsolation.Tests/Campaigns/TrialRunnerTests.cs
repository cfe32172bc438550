using DriverIsolation.Campaigns;
using DriverIsolation.Kernel;

namespace DriverIsolation.Tests.Campaigns;

/// <summary>When a trial waits for the watchdog's look: only while the instance its fault last
/// fired in still runs.</summary>
public sealed class TrialRunnerTests
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 27, 0, 0, 0, TimeSpan.Zero);

    private static KernelEvent E(int second, KernelEventKind kind, string driver) => new(T0.AddSeconds(second), kind, driver, null, "");

    [Fact]
    public void FaultFired_NoRestartSince_ItFiredInTheRunningInstance()
    {
        KernelEvent[] events = [E(0, KernelEventKind.DriverLoaded, "VBlock"), E(1, KernelEventKind.FaultInjected, "VBlock")];

        Assert.True(TrialRunner.FiredInTheRunningInstance(events, "VBlock"));
    }

    [Fact]
    public void RestartedAfterTheFault_TheInstanceIsGone()
    {
        KernelEvent[] events =
        [
            E(1, KernelEventKind.FaultInjected, "VBlock"),
            E(2, KernelEventKind.HostExited, "VBlock"),
            E(3, KernelEventKind.DriverRestarted, "VBlock"),
        ];

        Assert.False(TrialRunner.FiredInTheRunningInstance(events, "VBlock"));
    }

    [Fact]
    public void FiredAgainAfterARestart_ItFiredInTheRunningInstance()
    {
        KernelEvent[] events =
        [
            E(1, KernelEventKind.FaultInjected, "VBlock"),
            E(3, KernelEventKind.DriverRestarted, "VBlock"),
            E(4, KernelEventKind.FaultInjected, "VBlock"),
        ];

        Assert.True(TrialRunner.FiredInTheRunningInstance(events, "VBlock"));
    }

    [Fact]
    public void AnotherDriversRestart_OrFault_DoesNotCount()
    {
        KernelEvent[] restartedOther = [E(1, KernelEventKind.FaultInjected, "VBlock"), E(2, KernelEventKind.DriverRestarted, "Null")];
        KernelEvent[] firedInOther = [E(1, KernelEventKind.FaultInjected, "Null")];

        Assert.True(TrialRunner.FiredInTheRunningInstance(restartedOther, "VBlock"));
        Assert.False(TrialRunner.FiredInTheRunningInstance(firedInOther, "VBlock"));
        Assert.False(TrialRunner.FiredInTheRunningInstance([], "VBlock"));
    }
}
