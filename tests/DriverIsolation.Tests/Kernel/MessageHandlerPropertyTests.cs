using CsCheck;
using DriverIsolation.Kernel;
using DriverIsolation.Kernel.Hardware;

namespace DriverIsolation.Tests;

/// <summary>
/// The kernel's message handlers against a host that owns nothing: whatever it sends - a
/// completion or pass-down naming real and made-up IRPs and devices with any status, length and
/// data, DMA maps and unmaps, register writes - each is refused, nothing throws, and no one
/// else's state changes: pending requests stay pending for their real driver, the disk's data
/// and kernel memory stay intact, the IOMMU maps nothing. CsCheck prints the seed of a failure.
/// </summary>
[Collection("processes")]
public sealed class MessageHandlerPropertyTests
{
    private const int Iterations = 3_000;

    private abstract record HostMessage;

    private sealed record CompleteMessage(long Irp, int Device, int Status, long Information, byte[] Data) : HostMessage;

    private sealed record PassDownMessage(long Irp, int Device, bool WantsCompletion, long Offset, int Length, byte[] Input) : HostMessage;

    private sealed record DmaMapMessage(int Device, int FirstPage, int Pages, int Access) : HostMessage;

    private sealed record DmaUnmapMessage(int Device, int FirstPage, int Pages) : HostMessage;

    private sealed record RegisterMessage(int Device, int Register, ulong Value) : HostMessage;

    [Fact]
    public async Task AnyMessagesFromAHostThatOwnsNothing_AreRefused_AndChangeNothing()
    {
        await using var kernel = new Microkernel(new KernelOptions { IommuMode = IommuMode.Strict, HeartbeatPeriod = null, WarmPoolSize = 0 });
        await kernel.StartAsync([TestManifests.Sample("Echo"), TestManifests.Sample("VBlock")], IsolationModel.InKernel).Bounded();
        await using var disk = await kernel.OpenAsync(@"\??\VBlock0").Bounded();
        var data = Enumerable.Range(0, 16384).Select(i => (byte)(i * 13)).ToArray();
        Assert.Equal(new IoResult(NtStatus.Success, data.Length), await disk.WriteAsync(data, 8192).Bounded());
        await using var echo = await kernel.OpenAsync(@"\??\Echo").Bounded();
        var buffers = Enumerable.Range(0, 3).Select(_ => new byte[32]).ToArray();
        var pending = buffers.Select(b => echo.ReadAsync(b).AsTask()).ToArray();
        var stranger = new StrangerChannel();
        var io = kernel.Io;
        var machine = kernel.Machine!;

        // IRP and device IDs near the real ones (a few tens so far), so most messages name
        // something that exists.
        var irp = Gen.OneOf(Gen.Long[-3, 80], Gen.Long);
        var device = Gen.OneOf(Gen.Int[-3, 12], Gen.Int);
        var bytes = Gen.Byte.Array[0, 80];
        var message = Gen.OneOf<HostMessage>(
            Gen.Select(irp, device, Gen.Int, Gen.OneOf(Gen.Long[-2, 100], Gen.Long), bytes, (i, d, s, n, b) => new CompleteMessage(i, d, s, n, b)),
            Gen.Select(irp, device, Gen.Bool, Gen.Long, Gen.Int, bytes, (i, d, w, o, l, b) => new PassDownMessage(i, d, w, o, l, b)),
            Gen.Select(device, Gen.Int[-2, 200], Gen.Int[-2, 200], Gen.Int[-1, 8], (d, f, p, a) => new DmaMapMessage(d, f, p, a)),
            Gen.Select(device, Gen.Int[-2, 200], Gen.Int[-2, 200], (d, f, p) => new DmaUnmapMessage(d, f, p)),
            Gen.Select(device, Gen.Int[-2, 10], Gen.ULong, (d, r, v) => new RegisterMessage(d, r, v)));
        var refusalsExpected = 0;

        message.Array[1, 20].Sample(messages =>
        {
            foreach (var m in messages)
            {
                switch (m)
                {
                    case CompleteMessage c:
                        io.OnComplete(stranger, c.Irp, c.Device, (NtStatus)c.Status, c.Information, c.Data);
                        refusalsExpected++;
                        break;
                    case PassDownMessage p:
                        io.OnPassDown(stranger, p.Irp, p.Device, p.WantsCompletion, p.Offset, p.Length, p.Input);
                        refusalsExpected++;
                        break;
                    case DmaMapMessage map:
                        Assert.NotNull(machine.Map(stranger, map.Device, map.FirstPage, map.Pages, (DmaAccess)map.Access));
                        break;
                    case DmaUnmapMessage unmap:
                        Assert.NotNull(machine.Unmap(stranger, unmap.Device, unmap.FirstPage, unmap.Pages));
                        break;
                    case RegisterMessage register:
                        Assert.NotNull(machine.WriteRegister(stranger, register.Device, register.Register, register.Value));
                        break;
                }
            }

            Assert.All(pending, p => Assert.False(p.IsCompleted));
            Assert.Equal(refusalsExpected, stranger.Refusals);
        }, iter: Iterations, threads: 1);

        // The real driver still owns its requests, the disk its data, the kernel its memory.
        Assert.Equal(new IoResult(NtStatus.Success, 5), await echo.WriteAsync("after"u8.ToArray()).Bounded());
        var served = await Task.WhenAny(pending).Bounded();
        Assert.Equal(new IoResult(NtStatus.Success, 5), await served);
        var back = new byte[data.Length];
        Assert.Equal(new IoResult(NtStatus.Success, data.Length), await disk.ReadAsync(back, 8192).Bounded());
        Assert.Equal(data, back);
        Assert.True(kernel.VerifyKernelMemory().Intact);
        Assert.Equal(0, kernel.GetIommu()!.FaultCount);
        Assert.Null(kernel.BugCheckReason);
        echo.CancelIo();
    }

    /// <summary>A host the kernel never gave anything.</summary>
    private sealed class StrangerChannel : IHostChannel
    {
        private int _refusals;

        public int Refusals => Volatile.Read(ref _refusals);

        public string Name => "stranger";

        public IsolationModel Isolation => IsolationModel.Process;

        public int ProcessId => -1;

        public bool IsAlive => true;

        public Task<(NtStatus Status, string? Detail)> LoadDriverAsync(KernelDriver driver, string assemblyPath, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("the stranger loads nothing");

        public Task<(NtStatus Status, string? Detail)> AddDeviceAsync(KernelDriver driver, DeviceLayer layer, KernelDevice device, bool hasLowerDevice,
            IReadOnlyDictionary<string, string> parameters, Protocol.HardwareBinding? hardware, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("the stranger has no devices");

        public void Interrupt(int deviceId, int vector) => throw new InvalidOperationException("the stranger has no devices");

        public void Dispatch(KernelIrp irp, DeviceLayer layer) => throw new InvalidOperationException("the stranger holds no IRPs");

        public void Cancel(long irpId, DeviceLayer layer) => throw new InvalidOperationException("the stranger holds no IRPs");

        public void LowerCompleted(KernelIrp irp, DeviceLayer layer, NtStatus status, long information, ReadOnlyMemory<byte> data) =>
            throw new InvalidOperationException("the stranger holds no IRPs");

        public void Kill(string reason)
        {
        }

        public void CountRefusal() => Interlocked.Increment(ref _refusals);

        public void ArmFault(KernelDriver driver, DriverIsolation.Protocol.FaultSpec fault) => throw new InvalidOperationException("the stranger runs no driver");

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
