using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// A hostile driver host (tests/HostileHost, started by the kernel exactly like drvhost, token and
/// all) attacks the kernel: at the handshake, with broken frames, with messages a host may not
/// send, with completions that name the wrong device or overstate their data. Each attack is
/// contained (refused, or the host killed with a clear reason) while an in-kernel Null driver in
/// the same kernel keeps serving.
/// </summary>
[Collection("processes")]
public sealed class HostileHostTests
{
    [Theory]
    [InlineData("wrong-token", "refused at the handshake: wrong token")]
    [InlineData("wrong-pid", "refused at the handshake: claims PID")]
    [InlineData("silent", "connected but said nothing within 00:00:05")]
    public async Task HandshakeAttack_HostRefusedAndKilled_OthersServe(string attack, string failure)
    {
        await using var kernel = await BootAsync(attack);

        var driver = kernel.GetDrivers().Single(d => d.Name == attack);
        Assert.Equal(DriverState.Failed, driver.State);
        Assert.Contains(failure, driver.Failure, StringComparison.Ordinal);
        Assert.Null(kernel.GetDevice($@"\Device\{attack}"));
        await AssertNullServesAsync(kernel);
    }

    [Theory]
    [InlineData("garbage", "Malformed message body")]
    [InlineData("oversized", "Oversized frame: the length prefix says 2147483647 bytes")]
    [InlineData("truncated", "Truncated frame")]
    [InlineData("hello-again", "a host may not send Hello")]
    [InlineData("unasked-answer", "which the kernel never asked about")]
    [InlineData("ring-garbage", "Malformed message body")]
    [InlineData("ring-doorbell-in-ring", "Unexpected RingDoorbell in the ring: it belongs on the pipe.")]
    public async Task FrameAttack_ProtocolViolationKillsTheHost_OthersServe(string attack, string violation)
    {
        await using var kernel = await BootAsync(attack);

        var seen = await kernel.Events.WaitForAsync(KernelEventKind.ProtocolViolation).Bounded();

        Assert.Equal(attack, seen.Driver);
        Assert.Contains(violation, seen.Detail, StringComparison.Ordinal);
        Assert.Equal(DriverState.Failed, kernel.GetDrivers().Single(d => d.Name == attack).State);
        Assert.Null(kernel.BugCheckReason);
        await AssertNullServesAsync(kernel);
    }

    [Fact]
    public async Task SecondConnectionReplayingTheToken_IsRefusedLogged_AndTheHostKilled()
    {
        await using var kernel = await BootAsync("second-connection");

        var refused = await kernel.Events.WaitForAsync(KernelEventKind.ConnectionRefused).Bounded();
        var violation = await kernel.Events.WaitForAsync(KernelEventKind.ProtocolViolation).Bounded();

        var host = kernel.GetDrivers().Single(d => d.Name == "second-connection");
        Assert.Equal("second-connection", refused.Driver);
        Assert.Equal($"a second connection to the pipe, from PID {host.ProcessId} (the host itself)", refused.Detail);
        Assert.Equal("opened a second connection to its pipe", violation.Detail);
        await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.HostExited && e.Driver == "second-connection").Bounded();
        Assert.Equal(DriverState.Failed, kernel.GetDrivers().Single(d => d.Name == "second-connection").State);
        await AssertNullServesAsync(kernel);
    }

    [Fact]
    public async Task ForgedHostSpans_AreDropped_TheHonestOneIsRecorded_AndTheHostServes()
    {
        await using var kernel = await BootAsync("forged-spans");
        var trace = new TraceRecorder();
        kernel.Trace = trace;
        await using var device = await kernel.OpenAsync(@"\Device\forged-spans").Bounded();

        var result = await device.ReadAsync(new byte[8]).Bounded();
        kernel.Trace = null;
        var file = Path.Combine(Path.GetTempPath(), $"drviso-forged-{Guid.NewGuid():N}.json");
        try
        {
            await trace.WriteAsync(file);
            using var json = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(file));
            var slices = json.RootElement.GetProperty("traceEvents").EnumerateArray().Where(e => e.GetProperty("ph").GetString() == "X").ToList();
            var hostSlices = slices.Where(e => e.GetProperty("pid").GetInt32() != Environment.ProcessId).Select(e => e.GetProperty("name").GetString()).ToList();
            var irps = slices.Count(e => e.GetProperty("pid").GetInt32() == Environment.ProcessId);

            // Every IRP the host saw (the handle's Create and the Read): three forgeries dropped,
            // the honest span kept.
            Assert.Equal(NtStatus.Success, result.Status);
            Assert.Equal(2, irps);
            Assert.Equal(3 * irps, trace.RejectedHostSpans);
            Assert.Equal(Enumerable.Repeat("honest", irps), hostSlices);
            Assert.Equal(DriverState.Running, kernel.GetDrivers().Single(d => d.Name == "forged-spans").State);
            await AssertNullServesAsync(kernel);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public async Task CompletionNamingAnotherDevice_IsRefusedAndTheHonestOneIsApplied()
    {
        await using var kernel = await BootAsync("other-device");
        await using var device = await kernel.OpenAsync(@"\Device\other-device").Bounded();
        var buffer = new byte[8];

        var result = await device.ReadAsync(buffer).Bounded();
        var refused = await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.IrpId is not null
            && e.Detail.Contains("and the host named device", StringComparison.Ordinal)).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 8), result);
        Assert.All(buffer, b => Assert.Equal(0x42, b));
        Assert.Equal("other-device", refused.Driver);
        await AssertNullServesAsync(kernel);
    }

    [Fact]
    public async Task CompletionWithAStatusThatIsNoStatus_IsRefusedAndTheHonestOneIsApplied()
    {
        await using var kernel = await BootAsync("bad-status");
        await using var device = await kernel.OpenAsync(@"\Device\bad-status").Bounded();
        var buffer = new byte[8];

        var result = await device.ReadAsync(buffer).Bounded();
        var refused = await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.CompletionRefused && e.IrpId is not null).Bounded();

        Assert.Equal(new IoResult(NtStatus.Success, 8), result);
        Assert.All(buffer, b => Assert.Equal(0x42, b));
        Assert.Contains("status 0x12345678 is no status", refused.Detail, StringComparison.Ordinal);
        await AssertNullServesAsync(kernel);
    }

    [Fact]
    public async Task CompletionOverstatingItsData_IsRefusedAndTheRequestTimesOutInsteadOfOverflowing()
    {
        var time = new FakeTimeProvider();
        await using var kernel = await BootAsync("overstate", time);
        await using var device = await kernel.OpenAsync(@"\Device\overstate").Bounded();
        var buffer = new byte[16];

        var read = device.ReadAsync(buffer);
        var refused = await kernel.Events.WaitForAsync(KernelEventKind.CompletionRefused).Bounded();
        Assert.False(read.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(30));
        var result = await read.Bounded();

        Assert.Equal(IoResult.FromStatus(NtStatus.IoTimeout), result);
        Assert.Contains("32 bytes of data for a 16-byte buffer", refused.Detail, StringComparison.Ordinal);
        Assert.All(buffer, b => Assert.Equal(0, b));
        await AssertNullServesAsync(kernel);
    }

    /// <summary>A host asks the kernel to map DMA pages or write registers that are not its own:
    /// a page past its window, another driver's device, an access that is neither read nor write.
    /// The host is killed before anything changes; no mapping is made, the other driver's device
    /// keeps serving its data, and the hostile device's domain is torn down.</summary>
    [Theory]
    [InlineData("dma-outside-window", "DMA map of pages 16+1 is outside the 16-page window of device 3")]
    [InlineData("dma-other-device", "device 2 belongs to VBlock, not to this host")]
    [InlineData("register-other-device", "device 2 belongs to VBlock, not to this host")]
    [InlineData("dma-bad-access", "a mapping needs read, write or both; got access 65")]
    public async Task DmaAttack_ProtocolViolationKillsTheHost_TheOtherDevicesDataIntact(string attack, string violation)
    {
        // Null (device 1) and VBlock (device 2) run in the kernel; the hostile host's device (3)
        // has a block device of its own behind it, with a 64 KiB window.
        await using var kernel = await BootAsync(attack, withHardware: true);
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(new IoResult(NtStatus.Success, data.Length), await disk.WriteAsync(data, 4096).Bounded());

        var seen = await kernel.Events.WaitForAsync(KernelEventKind.ProtocolViolation).Bounded();
        await kernel.Events.WaitForAsync(e => e.Kind == KernelEventKind.HostExited && e.Driver == attack).Bounded();

        Assert.Equal(attack, seen.Driver);
        Assert.Contains(violation, seen.Detail, StringComparison.Ordinal);
        Assert.Equal(DriverState.Failed, kernel.GetDrivers().Single(d => d.Name == attack).State);
        var iommu = kernel.GetIommu()!;
        Assert.Equal(0, iommu.FaultCount);
        Assert.Null(iommu.Devices.Single(d => d.Name == $@"\Device\{attack}").BoundTo);
        Assert.Equal("VBlock", iommu.Devices.Single(d => d.Name == @"\Device\VBlock0").BoundTo);
        var back = new byte[data.Length];
        Assert.Equal(new IoResult(NtStatus.Success, data.Length), await disk.ReadAsync(back, 4096).Bounded());
        Assert.Equal(data, back);
        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Null(kernel.BugCheckReason);
        await AssertNullServesAsync(kernel);
    }

    private static async Task<Microkernel> BootAsync(string attack, TimeProvider? time = null, bool withHardware = false)
    {
        var kernel = new Microkernel(new KernelOptions
        {
            HostPath = Path.Combine(AppContext.BaseDirectory, "hostilehost.dll"),
            // Only the silent host runs into this bound (the others answer at once); it is long
            // enough for a slow machine to start a process and connect.
            HostStartTimeout = TimeSpan.FromSeconds(attack == "silent" ? 5 : 30),
            WarmPoolSize = 0,
            HeartbeatPeriod = null,
        }, timeProvider: time);
        var hostile = new DriverManifest
        {
            Name = attack,
            Assembly = "nothing-to-load.dll",
            Isolation = IsolationModel.Process,
            Devices = [new DeviceManifest
            {
                Name = $@"\Device\{attack}",
                Hardware = withHardware ? new HardwareManifest { Kind = "block", CapacityBytes = 1 << 20, DmaWindowBytes = 64 << 10 } : null,
            }],
            Recovery = new RecoveryPolicy { Restart = false },
            Transport = attack.StartsWith("ring-", StringComparison.Ordinal) ? Transport.Ring : Transport.Pipe,
        };
        var inKernelNull = TestManifests.Sample("Null") with { Isolation = IsolationModel.InKernel };
        await kernel.StartAsync(withHardware
            ? [inKernelNull, TestManifests.Sample("VBlock") with { Isolation = IsolationModel.InKernel }, hostile]
            : [hostile, inKernelNull]).Bounded();
        return kernel;
    }

    private static async Task AssertNullServesAsync(Microkernel kernel)
    {
        await using var nul = await kernel.OpenAsync(@"\??\NUL").Bounded();
        Assert.Equal(new IoResult(NtStatus.Success, 8), await nul.ReadAsync(new byte[8]).Bounded());
    }
}
