using DriverIsolation.Kernel;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// The fault shim injects each fault into the unchanged Null driver after three good requests,
/// tells the kernel first (a FaultInjected event), and the kernel sees exactly the consequence
/// that fault must have: in a host process the host dies or its bad completions are refused and
/// the kernel serves on; in-kernel the same fault is a bug check.
/// </summary>
[Collection("processes")]
public sealed class FaultShimTests
{
    private const int Good = 3;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);

    public static TheoryData<string, NtStatus, KernelEventKind?> HostFaults => new()
    {
        { "unhandled-exception", NtStatus.DriverProcessTerminated, KernelEventKind.HostExited },
        { "fail-fast", NtStatus.DriverProcessTerminated, KernelEventKind.HostExited },
        { "stack-overflow", NtStatus.DriverProcessTerminated, KernelEventKind.HostExited },
        { "wrong-status", NtStatus.InvalidDeviceState, null },
        { "garbage-information", NtStatus.IoTimeout, KernelEventKind.CompletionRefused },
        { "double-completion", NtStatus.Success, KernelEventKind.CompletionRefused },
        { "foreign-completion", NtStatus.Success, KernelEventKind.CompletionRefused },
        { "slow-completion", NtStatus.Success, null },
        { "hang", NtStatus.IoTimeout, KernelEventKind.IrpTimedOut },
        { "infinite-loop", NtStatus.IoTimeout, KernelEventKind.IrpTimedOut },
        { "malformed-frame", NtStatus.DriverProcessTerminated, KernelEventKind.ProtocolViolation },
    };

    [Theory]
    [MemberData(nameof(HostFaults))]
    public async Task FaultAfterThreeRequests_InAHost_FiresOnceAtTheFourth_WithItsConsequence(string fault, NtStatus fourth, KernelEventKind? consequence)
    {
        // Deadlines run on a fake clock: a request times out when the test says so, never because
        // the machine was slow.
        var time = new FakeTimeProvider();
        await using var kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = null }, timeProvider: time);
        await kernel.StartAsync([NullWith(fault)], IsolationModel.Process).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        for (var i = 0; i < Good; i++)
        {
            Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[16]).Bounded()).Status);
        }

        Assert.Equal(0, kernel.Events.Count(KernelEventKind.FaultInjected));
        var reading = nul.ReadAsync(new byte[16]);
        var injected = await kernel.Events.WaitForAsync(KernelEventKind.FaultInjected).Bounded();
        if (fourth == NtStatus.IoTimeout)
        {
            if (consequence == KernelEventKind.CompletionRefused)
            {
                await kernel.Events.WaitForAsync(KernelEventKind.CompletionRefused).Bounded();
            }

            Assert.False(reading.IsCompleted);
            time.Advance(Timeout);
        }

        var result = await reading.Bounded();

        Assert.Equal(fourth, result.Status);
        Assert.Equal("Null", injected.Driver);
        Assert.StartsWith($"{fault} in Null on Read IRP ", injected.Detail, StringComparison.Ordinal);
        Assert.EndsWith("(request 4 since load)", injected.Detail, StringComparison.Ordinal);
        if (consequence is { } kind)
        {
            await kernel.Events.WaitForAsync(kind).Bounded();
        }
        else
        {
            Assert.Equal(0, kernel.Events.Count(KernelEventKind.HostExited));
            Assert.Equal(0, kernel.Events.Count(KernelEventKind.CompletionRefused));
        }

        // The fault fires once per run: a restarted instance is loaded without it, and the device serves.
        if (consequence is KernelEventKind.HostExited or KernelEventKind.ProtocolViolation)
        {
            await kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted).Bounded();
        }

        for (var i = 0; i < Good + 2; i++)
        {
            Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[16]).Bounded()).Status);
        }

        Assert.Equal(1, kernel.Events.Count(KernelEventKind.FaultInjected));
        Assert.Equal(0, kernel.Events.Count(KernelEventKind.BugCheck));
    }

    [Fact]
    public async Task UnhandledException_InKernel_IsABugCheck_EveryDeviceGoesDown()
    {
        await using var kernel = new Microkernel();
        await kernel.StartAsync([NullWith("unhandled-exception"), TestManifests.Sample("Echo")], IsolationModel.InKernel).Bounded();
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        for (var i = 0; i < Good; i++)
        {
            Assert.Equal(NtStatus.Success, (await nul.ReadAsync(new byte[16]).Bounded()).Status);
        }

        await nul.ReadAsync(new byte[16]).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.BugCheck).Bounded();

        Assert.Equal(1, kernel.Events.Count(KernelEventKind.FaultInjected));
        Assert.Equal(NtStatus.SystemCrashed, (await nul.ReadAsync(new byte[16]).Bounded()).Status);
        await Assert.ThrowsAsync<IoException>(() => kernel.OpenAsync(@"\??\Echo")).Bounded();
    }

    [Fact]
    public async Task CorruptContentUpdate_FiresAtEveryLoad_TheDriverEndsQuarantined()
    {
        var manifest = TestManifests.Sample("Null") with
        {
            Recovery = new RecoveryPolicy { MaxFailures = 2, BackoffBase = TimeSpan.FromMilliseconds(1), BackoffMax = TimeSpan.FromMilliseconds(5) },
            Faults = [new FaultSpec(0, "corrupt-content-update", "load", 0, false, 1, [])],
        };
        await using var kernel = new Microkernel();
        await kernel.StartAsync([manifest, TestManifests.Sample("Echo")], IsolationModel.Process).Bounded();
        await kernel.Events.WaitForAsync(KernelEventKind.DriverQuarantined).Bounded();

        Assert.Equal(DriverState.Quarantined, kernel.GetDrivers().Single(d => d.Name == "Null").State);
        // Every load crashed on the update, and every crash was one.
        var loads = kernel.Events.Count(KernelEventKind.FaultInjected);
        Assert.True(loads > 2, $"{loads} loads");
        Assert.Equal(loads, kernel.Events.Snapshot().Count(e => e.Kind == KernelEventKind.HostExited && e.Driver == "Null"));
        await using var echo = await kernel.OpenAsync(@"\??\Echo").Bounded();
        Assert.Equal(DriverState.Running, kernel.GetDrivers().Single(d => d.Name == "Echo").State);
    }

    private static DriverManifest NullWith(string fault) => TestManifests.Sample("Null") with
    {
        Limits = new DriverLimits { RequestTimeout = Timeout },
        Recovery = new RecoveryPolicy { BackoffBase = TimeSpan.FromMilliseconds(1), BackoffMax = TimeSpan.FromMilliseconds(5) },
        Faults = [new FaultSpec(0, fault, "requests", Good, false, 7, new Dictionary<string, string> { ["delayMs"] = "50" })],
    };
}

/// <summary>A driver that crashes its shared host at every load must not stall boot: the host's
/// other drivers come back (in their own processes), the crasher ends quarantined.</summary>
[Collection("processes")]
public sealed class SharedHostBootCrashTests
{
    [Fact]
    public async Task DriverCrashingItsSharedHostAtLoad_BootCompletes_TheOthersServe()
    {
        var crasher = TestManifests.Sample("Null") with
        {
            Recovery = new RecoveryPolicy { MaxFailures = 2, BackoffBase = TimeSpan.FromMilliseconds(1), BackoffMax = TimeSpan.FromMilliseconds(5) },
            Faults = [new FaultSpec(0, "corrupt-content-update", "load", 0, false, 1, [])],
        };
        await using var kernel = new Microkernel();
        await kernel.StartAsync([crasher, TestManifests.Sample("Echo"), TestManifests.Sample("RamDisk")], IsolationModel.SharedHost).Bounded();

        Assert.Equal(DriverState.Quarantined, kernel.GetDrivers().Single(d => d.Name == "Null").State);
        Assert.All(kernel.GetDrivers().Where(d => d.Name != "Null"), d => Assert.Equal(DriverState.Running, d.State));
        await using var disk = await kernel.OpenAsync(@"\??\RamDisk0").Bounded();
        Assert.Equal(NtStatus.Success, (await disk.WriteAsync(new byte[512]).Bounded()).Status);
    }
}
