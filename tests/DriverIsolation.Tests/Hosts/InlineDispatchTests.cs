using System.IO.Pipes;
using DriverIsolation.DriverHost;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// A host runs routines inline on the thread that reads its pipe. A routine that holds that
/// thread past the stall time gets it to itself and a new reader takes over, so the requests
/// behind it are served; with pool dispatch they are served at once. The host is a real
/// <see cref="HostServer"/> on a real pipe, this test playing the kernel; the stall clock is fake.
/// </summary>
public sealed class InlineDispatchTests
{
    private const int DeviceId = 7;

    /// <param name="idleFirst">The host idles for 100 ms before the routine that blocks: the stall
    /// watch, which stops when it finds no routine running, must start again with it.</param>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Inline_ARoutineThatBlocks_HoldsThePipeUntilTheStallTime_ThenANewReaderServesTheRest(bool idleFirst)
    {
        await using var host = await StalledHostAsync(HostDispatch.Inline, idleFirst);

        // IRP 2 waits behind the blocked routine until the stall time has passed: not at 19 ms...
        host.Kernel.Send(Read(2, blocks: false));
        host.Clock.Advance(TimeSpan.FromMilliseconds(19));
        Assert.Equal(0, host.Server.ReaderHandoffs);

        // ...at 20 ms a new reader takes over, and IRP 2 completes while IRP 1 still blocks.
        host.Clock.Advance(TimeSpan.FromMilliseconds(1));
        var second = Assert.IsType<Complete>(await host.Kernel.ReadAsync().AsTask().Bounded());
        Assert.Equal((2L, NtStatus.Success, 512L), (second.IrpId, second.Status, second.Information));
        Assert.Equal(1, host.Server.ReaderHandoffs);

        // The blocked routine finishes on its own thread, and that thread reads no more: the new
        // reader answers the ping, once.
        host.Gate.Set();
        var first = Assert.IsType<Complete>(await host.Kernel.ReadAsync().AsTask().Bounded());
        Assert.Equal((1L, NtStatus.Success), (first.IrpId, first.Status));
        host.Kernel.Send(new Ping(99));
        Assert.Equal(99, Assert.IsType<Pong>(await host.Kernel.ReadAsync().AsTask().Bounded()).Sequence);
        Assert.Equal(1, host.Server.ReaderHandoffs);
    }

    [Fact]
    public async Task Pool_ARoutineThatBlocks_DoesNotHoldThePipe()
    {
        await using var host = await StalledHostAsync(HostDispatch.Pool);

        host.Kernel.Send(Read(2, blocks: false));
        var second = Assert.IsType<Complete>(await host.Kernel.ReadAsync().AsTask().Bounded());

        Assert.Equal(2, second.IrpId);
        Assert.Equal(0, host.Server.ReaderHandoffs);
        host.Gate.Set();
        Assert.Equal(1, Assert.IsType<Complete>(await host.Kernel.ReadAsync().AsTask().Bounded()).IrpId);
    }

    /// <summary>A host with the stalling driver loaded, its device added, and IRP 1 blocked in the
    /// driver's Read routine.</summary>
    private static async Task<StalledHost> StalledHostAsync(HostDispatch dispatch, bool idleFirst = false)
    {
        var gate = new ManualResetEventSlim();
        var entered = new ManualResetEventSlim();
        var key = $"stalling-driver-{Guid.NewGuid():N}";
        AppContext.SetData(key, (gate, entered));

        var name = $"drviso-test-{Guid.NewGuid():N}";
        var server = new NamedPipeServerStream(name, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        var client = new NamedPipeClientStream(".", name, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        await Task.WhenAll(server.WaitForConnectionAsync(), client.ConnectAsync()).Bounded();
        var kernel = new FrameConnection(server, untrustedPeer: true);
        var hostConnection = new FrameConnection(client, untrustedPeer: false);
        var clock = new FakeTimeProvider();
        var host = new HostServer(hostConnection, "test host", dispatch: dispatch, inlineStall: TimeSpan.FromMilliseconds(20), time: clock);
        var running = host.RunAsync([1, 2, 3]);
        var stalled = new StalledHost(kernel, hostConnection, host, running, clock, gate, key);

        Assert.IsType<Hello>(await kernel.ReadAsync().AsTask().Bounded());
        kernel.Send(new Welcome(ProtocolConstants.Version, "test host"));
        kernel.Send(new LoadDriver(1, "Stalling", typeof(StallingDriver).Assembly.Location, typeof(StallingDriver).FullName, new Dictionary<string, string> { ["key"] = key }, null, false));
        Assert.Equal(NtStatus.Success, Assert.IsType<DriverLoaded>(await kernel.ReadAsync().AsTask().Bounded()).Status);
        kernel.Send(new AddDevice(1, DeviceId, @"\Device\Stalling", DeviceType.Null, false, [], null));
        Assert.Equal(NtStatus.Success, Assert.IsType<DeviceAdded>(await kernel.ReadAsync().AsTask().Bounded()).Status);
        if (idleFirst)
        {
            clock.Advance(TimeSpan.FromMilliseconds(100));
        }

        kernel.Send(Read(1, blocks: true));
        Assert.True(entered.Wait(Waits.Default), "the driver's routine did not start");
        return stalled;
    }

    private static Dispatch Read(long irpId, bool blocks) =>
        new(irpId, DeviceId, MajorFunction.Read, 0, 1, blocks ? 0 : 512, 512, 0, ReadOnlyMemory<byte>.Empty, 512);

    private sealed record StalledHost(FrameConnection Kernel, FrameConnection HostConnection, HostServer Server, Task<int> Running,
        FakeTimeProvider Clock, ManualResetEventSlim Gate, string Key) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            Gate.Set();
            Kernel.Send(new Shutdown("test over"));
            Assert.Equal(ExitCodes.Shutdown, await Running.Bounded());
            await Kernel.DisposeAsync();
            await HostConnection.DisposeAsync();
            AppContext.SetData(Key, null);
        }
    }
}

/// <summary>A driver whose Read at offset 0 blocks until the test opens its gate; any other Read
/// completes at once. It finds the test's events through AppContext (it runs in its own load
/// context, so it shares no statics with the test).</summary>
public sealed class StallingDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        var (gate, entered) = ((ManualResetEventSlim, ManualResetEventSlim))AppContext.GetData(driver.Parameters["key"])!;
        driver[MajorFunction.Read] = (_, irp) =>
        {
            if (irp.Offset == 0)
            {
                entered.Set();
                gate.Wait(TimeSpan.FromSeconds(30));
            }

            irp.Complete(NtStatus.Success, irp.OutputBuffer.Length);
            return NtStatus.Success;
        };
        return NtStatus.Success;
    }
}
