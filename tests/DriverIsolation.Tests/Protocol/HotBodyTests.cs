using System.Buffers;
using CsCheck;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>
/// The two messages every request carries are written without a message object
/// (<see cref="DispatchBody"/>, <see cref="CompleteBody"/>). Their bytes must be exactly the
/// serializer's for the same message record, for any field values, so a peer cannot tell them
/// apart; and they decode back to those values.
/// </summary>
public sealed class HotBodyTests
{
    private const int Iterations = 5_000;

    private static readonly Gen<long> AnyLong = Gen.OneOf(Gen.Long, Gen.Long[-300, 300], Pick(long.MinValue, long.MaxValue, 0L, 127L, 128L, 255L, 256L, 65_535L, 65_536L, uint.MaxValue));

    private static readonly Gen<int> AnyInt = Gen.OneOf(Gen.Int, Gen.Int[-300, 300], Pick(int.MinValue, int.MaxValue, 0, 31, 32, 127, 128, 255, 256, 65_535, 65_536));

    private static readonly Gen<byte[]> AnyBytes = Gen.OneOf(Gen.Byte.Array[0, 40], Gen.Byte.Array[250, 260], Gen.Byte.Array[65_530, 65_540]);

    /// <summary>Payloads small enough for thousands of frames through a connection.</summary>
    private static readonly Gen<byte[]> SmallBytes = Gen.OneOf(Gen.Byte.Array[0, 40], Gen.Byte.Array[250, 260]);

    private static Gen<T> Pick<T>(params T[] values) => Gen.Int[0, values.Length - 1].Select(i => values[i]);

    private static Gen<DispatchBody> Dispatches(Gen<byte[]> inputs, Gen<string?> traces) =>
        from irp in AnyLong
        from device in AnyInt
        from major in Gen.Byte
        from minor in Gen.Byte
        from file in AnyLong
        from offset in AnyLong
        from length in AnyInt
        from ioctl in Gen.OneOf(Gen.UInt, Pick(0u, 127u, 128u, uint.MaxValue))
        from input in inputs
        from output in AnyInt
        from trace in traces
        select new DispatchBody(irp, device, (MajorFunction)major, minor, file, offset, length, ioctl, input, output, trace);

    private static Gen<CompleteBody> Completes(Gen<byte[]> data) =>
        from irp in AnyLong
        from device in AnyInt
        from status in Gen.OneOf(Gen.UInt, Pick(0u, 0x103u, 0xC0000001u, uint.MaxValue))
        from information in AnyLong
        from bytes in data
        select new CompleteBody(irp, device, (NtStatus)status, information, bytes);

    private static readonly Gen<string?> AnyTrace = Gen.OneOf(Gen.Const((string?)null), Gen.String.Select(s => (string?)s), Gen.Const((string?)"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));

    /// <summary>A frame's body with one of: no change (two cases in six), a byte changed, cut
    /// short, a byte too many, a byte slipped in.</summary>
    private static readonly Gen<(int Change, int At, byte Value)> Changes =
        from change in Gen.Int[0, 5]
        from at in Gen.Int[0, 1_000]
        from value in Gen.Byte
        select (change, at, value);

    [Fact]
    public void DispatchBody_WritesExactlyTheSerializersBytes()
    {
        Dispatches(AnyBytes, AnyTrace).Sample(body =>
        {
            var record = ToDispatch(body);
            var expected = FrameCodec.SerializeBody(record, int.MaxValue, new ArrayBufferWriter<byte>()).ToArray();
            var written = FrameCodec.SerializeBody(body, int.MaxValue, new ArrayBufferWriter<byte>()).ToArray();
            Assert.Equal(expected, written);

            var back = Assert.IsType<Dispatch>(FrameCodec.DecodeBody(new ReadOnlySequence<byte>(written), FrameCodec.UntrustedOptions));
            Assert.Equal(record with { Input = default }, back with { Input = default });
            Assert.Equal(body.Input.ToArray(), back.Input.ToArray());
        }, iter: Iterations);
    }

    [Fact]
    public void CompleteBody_WritesExactlyTheSerializersBytes()
    {
        Completes(AnyBytes).Sample(body =>
        {
            var record = new Complete(body.IrpId, body.DeviceId, body.Status, body.Information, body.Data);
            var expected = FrameCodec.SerializeBody(record, int.MaxValue, new ArrayBufferWriter<byte>()).ToArray();
            var written = FrameCodec.SerializeBody(body, int.MaxValue, new ArrayBufferWriter<byte>()).ToArray();
            Assert.Equal(expected, written);

            // Framed as the connection frames it, it reads back as the same message.
            var frame = new ArrayBufferWriter<byte>();
            FrameCodec.WriteFrame(frame, written);
            var sequence = new ReadOnlySequence<byte>(frame.WrittenMemory);
            Assert.True(FrameCodec.TryReadFrame(ref sequence, int.MaxValue, out var framed));
            Assert.True(sequence.IsEmpty);
            var back = Assert.IsType<Complete>(FrameCodec.DecodeBody(framed, FrameCodec.UntrustedOptions));
            Assert.Equal(record with { Data = default }, back with { Data = default });
            Assert.Equal(body.Data.ToArray(), back.Data.ToArray());
        }, iter: Iterations);
    }

    /// <summary>The kernel reads a host's completions into one <see cref="ReceivedComplete"/> per
    /// connection. For any frame (a well-formed completion, or one with bytes flipped, cut or
    /// added), it must get what the serializer gives: the same fields, the same other message, or
    /// the same refusal.</summary>
    [Fact]
    public void ReceivedComplete_ReadsEveryFrameAsTheSerializerDoes()
    {
        var hot = 0;
        Completes(SmallBytes).Select(Changes).Sample(
            (body, change) => hot += SameAsTheSerializer(Mutate(Serialize(body), change), kernelSide: true) ? 1 : 0, iter: 3_000, threads: 1);

        // Most frames are well-formed completions: the hot reader was exercised, not bypassed.
        Assert.True(hot > 1_000, $"only {hot} completions read");
    }

    /// <summary>A host reads the kernel's requests into one <see cref="ReceivedDispatch"/> per
    /// connection: for any frame it must get what the serializer gives.</summary>
    [Fact]
    public void ReceivedDispatch_ReadsEveryFrameAsTheSerializerDoes()
    {
        var hot = 0;
        Dispatches(SmallBytes, Gen.OneOf(Gen.Const((string?)null), Gen.Const((string?)"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))).Select(Changes).Sample(
            (body, change) => hot += SameAsTheSerializer(Mutate(Serialize(body), change), kernelSide: false) ? 1 : 0, iter: 2_000, threads: 1);

        Assert.True(hot > 700, $"only {hot} requests read");
    }

    /// <summary>Reads a frame as the kernel (completions into one <see cref="ReceivedComplete"/>)
    /// or a host (requests into one <see cref="ReceivedDispatch"/>) does, and through the
    /// serializer alone, and asserts both give the same message or refusal. True if the reused
    /// object read it (a form it leaves to the serializer, such as data sent as a string, reads
    /// as the serializer's message).</summary>
    private static bool SameAsTheSerializer(byte[] body, bool kernelSide)
    {
        var expected = Read(body, untrusted: kernelSide);
        var actual = Read(body, untrusted: kernelSide, borrow: kernelSide, reuseDispatch: !kernelSide);
        Assert.Equal(Describe(expected), Describe(actual));
        return actual is ReceivedComplete or ReceivedDispatch;
    }

    /// <summary>A refusal's text, or a message's kind and every field (a reused object as the
    /// message it stands for, payloads by content).</summary>
    private static string Describe(object? read) => read switch
    {
        string refusal => refusal,
        ReceivedComplete r => Describe(new Complete(r.IrpId, r.DeviceId, r.Status, r.Information, r.Data.ToArray())),
        Complete c => $"Complete {c.IrpId} {c.DeviceId} {c.Status} {c.Information} {Convert.ToHexString(c.Data.Span)}",
        ReceivedDispatch r => Describe(ToDispatch(r.Body)),
        Dispatch d => $"Dispatch {d with { Input = default }} {Convert.ToHexString(d.Input.Span)}",
        _ => $"{read?.GetType().Name}: {read}",
    };

    private static Dispatch ToDispatch(DispatchBody b) =>
        new(b.IrpId, b.DeviceId, b.MajorFunction, b.MinorFunction, b.FileId, b.Offset, b.Length, b.IoControlCode, b.Input, b.OutputLength, b.TraceParent);

    private static byte[] Serialize<TBody>(TBody body)
        where TBody : struct, IFrameBody =>
        FrameCodec.SerializeBody(body, int.MaxValue, new ArrayBufferWriter<byte>()).ToArray();

    private static byte[] Mutate(byte[] body, (int Change, int At, byte Value) how)
    {
        var (change, at, value) = how;
        at %= body.Length;
        return change switch
        {
            0 or 1 => body,                                 // as written
            2 => [.. body[..at], value, .. body[(at + 1)..]], // one byte changed
            3 => body[..at],                                // cut short
            4 => [.. body, value],                          // a byte too many
            _ => [.. body[..at], value, .. body[at..]],     // a byte slipped in
        };
    }

    /// <summary>One frame through a real connection: its message, or its refusal's text.</summary>
    private static object? Read(byte[] body, bool untrusted, bool borrow = false, bool reuseDispatch = false)
    {
        var frame = new ArrayBufferWriter<byte>();
        FrameCodec.WriteFrame(frame, body);
        var connection = new FrameConnection(new MemoryStream(frame.WrittenMemory.ToArray(), writable: false), untrustedPeer: untrusted,
            borrowPayloads: borrow, reuseDispatch: reuseDispatch);
        try
        {
            var message = connection.ReadAsync().AsTask().GetAwaiter().GetResult();
            return message switch
            {
                ReceivedComplete r => r,
                ReceivedDispatch r => r,
                Complete c => c,
                Dispatch d => d,
                null => "closed",
                _ => message,
            };
        }
        catch (ProtocolException ex)
        {
            return ex.Message;
        }
        finally
        {
            connection.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    [Fact]
    public void ABodyOverTheFrameLimit_IsRefusedByName()
    {
        var body = new CompleteBody(1, 1, NtStatus.Success, 100, new byte[100]);

        var refused = Assert.Throws<ProtocolException>(() => FrameCodec.SerializeBody(body, 64, new ArrayBufferWriter<byte>()).ToArray());
        Assert.Contains("Complete", refused.Message, StringComparison.Ordinal);
    }
}
