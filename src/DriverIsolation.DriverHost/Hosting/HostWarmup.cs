using DriverIsolation.Protocol;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace DriverIsolation.DriverHost;

/// <summary>
/// Runs the host's own paths once before the handshake, so that a host taken from the warm pool
/// serves its first driver at full speed: MessagePack generates a formatter per message type on
/// first use, and the JIT compiles each path on first call; both cost far more than a request.
/// </summary>
internal static class HostWarmup
{
    public static void Run()
    {
        foreach (var message in Samples())
        {
            var frame = FrameCodec.Encode(message);
            var sequence = new System.Buffers.ReadOnlySequence<byte>(frame);
            FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out var body);
            FrameCodec.DecodeBody(body, FrameCodec.TrustedOptions);
        }

        // The host writes its completions without a message object: that path too.
        var scratch = new System.Buffers.ArrayBufferWriter<byte>(256);
        FrameCodec.WriteFrame(scratch, FrameCodec.SerializeBody(new CompleteBody(1, 1, NtStatus.Success, 16, new byte[16]), ProtocolConstants.DefaultMaxFrameSize, new System.Buffers.ArrayBufferWriter<byte>(256)));

        var runtime = new DriverRuntime(new NullLink(), (_, _) => NullLogger.Instance);
        var empty = new Dictionary<string, string>();
        // The rehearsal's driver (HostRehearsal): every major function below has a routine.
        runtime.LoadDriver(-1, "warmup", new HostRehearsal.RehearsalDriver(), empty);
        runtime.AddDevice(-1, -1, @"\Device\Warmup", DeviceType.Unknown, hasLowerDevice: false, empty);
        var buffer = new byte[512];
        foreach (var major in new[] { MajorFunction.Create, MajorFunction.Read, MajorFunction.Write, MajorFunction.DeviceControl, MajorFunction.Cleanup, MajorFunction.Close })
        {
            var irp = runtime.Accept(-1, -1, major, 0, -1, 0, buffer.Length, 0, buffer, buffer);
            if (irp is not null)
            {
                DriverRuntime.Invoke(irp);
            }
        }

        runtime.UnloadAll();
    }

    private static IEnumerable<Message> Samples()
    {
        var map = new Dictionary<string, string> { ["k"] = "v" };
        var data = new byte[16];
        yield return new Hello(ProtocolConstants.Version, data, 1);
        yield return new Welcome(ProtocolConstants.Version, "warmup");
        yield return new Refused("warmup");
        yield return new LoadDriver(1, "warmup", "warmup.dll", null, map);
        yield return new DriverLoaded(1, NtStatus.Success, null);
        yield return new AddDevice(1, 1, @"\Device\Warmup", DeviceType.Unknown, false, map);
        yield return new DeviceAdded(1, NtStatus.Success, null);
        yield return new Dispatch(1, 1, MajorFunction.Read, 0, 1, 0, 16, 0, data, 16);
        yield return new Complete(1, 1, NtStatus.Success, 16, data);
        yield return new PassDown(1, 1, true, 0, 16, data);
        yield return new LowerCompleted(1, 1, NtStatus.Success, 16, data);
        yield return new Cancel(1, 1);
        yield return new Ping(1);
        yield return new Pong(1, 1, 1);
        yield return new Log(1, 2, "warmup");
        yield return new PrepareDriver("warmup", "warmup.dll", null);
        yield return new Shutdown("warmup");
    }

    private sealed class NullLink : IKernelLink
    {
        public void Complete(long irpId, int deviceId, NtStatus status, long information, ReadOnlyMemory<byte> data)
        {
        }

        public void PassDown(long irpId, int deviceId, bool wantsCompletion, long offset, int length, ReadOnlyMemory<byte> input)
        {
        }

        public void Log(int driverId, LogLevel level, string message)
        {
        }

        public void DmaMap(int deviceId, int firstPage, int pages, DmaAccess access)
        {
        }

        public void DmaUnmap(int deviceId, int firstPage, int pages)
        {
        }

        public void WriteRegister(int deviceId, int registerIndex, ulong value)
        {
        }

        public void FaultInjected(int driverId, int index, string fault, string detail)
        {
        }

        public bool SendMalformedFrame(ReadOnlySpan<byte> bytes) => false;

        public bool WriteKernelMemory(ulong physicalAddress, ulong value) => false;
    }
}
