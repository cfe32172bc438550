using System.Buffers;
using System.Buffers.Binary;
using System.Reflection;
using DriverIsolation.Protocol;
using MessagePack;

namespace DriverIsolation.Tests;

public sealed class FrameCodecTests
{
    public static TheoryData<string> MessageKinds() => [.. AllMessages.Samples().Select(m => m.GetType().Name)];

    [Theory]
    [MemberData(nameof(MessageKinds))]
    public void EncodeThenDecode_EveryMessageKind_RoundTripsEveryField(string kind)
    {
        var original = AllMessages.Samples().Single(m => m.GetType().Name == kind);
        var sequence = new ReadOnlySequence<byte>(FrameCodec.Encode(original));

        Assert.True(FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out var body));
        var decoded = FrameCodec.DecodeBody(body, FrameCodec.UntrustedOptions);

        Assert.True(sequence.IsEmpty);
        Assert.Equal(Describe(original), Describe(decoded));
    }

    [Fact]
    public void Samples_CoverEveryUnionCase()
    {
        var unionTypes = typeof(Message).GetCustomAttributes<UnionAttribute>().Select(u => u.SubType).ToHashSet();
        var sampled = AllMessages.Samples().Select(m => m.GetType()).ToHashSet();

        Assert.Equal(unionTypes.OrderBy(t => t.Name).Select(t => t.Name), sampled.OrderBy(t => t.Name).Select(t => t.Name));
    }

    [Fact]
    public void Samples_UnionKeysAreUnique()
    {
        var keys = typeof(Message).GetCustomAttributes<UnionAttribute>().Select(u => u.Key).ToList();

        Assert.Equal(keys.Count, keys.Distinct().Count());
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(3)]
    public void TryReadFrame_PartialHeader_ReturnsFalseAndConsumesNothing(int bytes)
    {
        var sequence = new ReadOnlySequence<byte>(FrameCodec.Encode(new Ping(1))[..bytes]);

        Assert.False(FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out _));
        Assert.Equal(bytes, sequence.Length);
    }

    [Fact]
    public void TryReadFrame_PartialBody_ReturnsFalseAndConsumesNothing()
    {
        var frame = FrameCodec.Encode(new Log(1, 2, "a message long enough to split"));
        var sequence = new ReadOnlySequence<byte>(frame[..^1]);

        Assert.False(FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out _));
        Assert.Equal(frame.Length - 1, sequence.Length);
    }

    [Fact]
    public void TryReadFrame_TwoFramesBackToBack_ReadsBothInOrder()
    {
        var sequence = new ReadOnlySequence<byte>([.. FrameCodec.Encode(new Ping(1)), .. FrameCodec.Encode(new Ping(2))]);

        Assert.True(FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out var first));
        Assert.True(FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out var second));

        Assert.Equal(1, Assert.IsType<Ping>(FrameCodec.DecodeBody(first, FrameCodec.UntrustedOptions)).Sequence);
        Assert.Equal(2, Assert.IsType<Ping>(FrameCodec.DecodeBody(second, FrameCodec.UntrustedOptions)).Sequence);
        Assert.True(sequence.IsEmpty);
    }

    [Fact]
    public void TryReadFrame_SplitIntoSegmentsAtEveryPosition_DecodesTheSameMessage()
    {
        var frame = FrameCodec.Encode(AllMessages.Samples().OfType<Dispatch>().Single());
        for (var split = 1; split < frame.Length; split++)
        {
            var sequence = Segments.Of(frame[..split], frame[split..]);

            Assert.True(FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out var body));
            var dispatch = Assert.IsType<Dispatch>(FrameCodec.DecodeBody(body, FrameCodec.UntrustedOptions));
            Assert.Equal(123456789012, dispatch.IrpId);
            Assert.Equal(new byte[] { 9, 8, 7 }, dispatch.Input.ToArray());
        }
    }

    [Fact]
    public void TryReadFrame_ZeroLength_ThrowsEmptyFrame()
    {
        var sequence = new ReadOnlySequence<byte>(new byte[4]);

        var error = Assert.Throws<ProtocolException>(() => FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out _));
        Assert.Contains("Empty", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(uint.MaxValue)]
    [InlineData((uint)ProtocolConstants.DefaultMaxFrameSize + 1)]
    public void TryReadFrame_OversizedLength_ThrowsFromTheHeaderAlone(uint length)
    {
        var header = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(header, length);
        var sequence = new ReadOnlySequence<byte>(header);

        var error = Assert.Throws<ProtocolException>(() => FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out _));
        Assert.Contains("Oversized", error.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, byte[]> GarbageBodies() => new()
    {
        { "random bytes", [0xC1, 0xFF, 0x00, 0x13] },
        { "an integer", [0x2A] },
        { "a map", [0x81, 0xA1, 0x61, 0x01] },
        { "nil", [0xC0] },
        { "an unknown union key", [0x92, 0x63, 0x90] },
        { "a union with the wrong payload shape", [0x92, 0x0C, 0xA3, 0x61, 0x62, 0x63] },
        { "a union with too few fields", [0x92, 0x07, 0x91, 0x01] },
        { "a truncated string", [0x92, 0x02, 0x91, 0xA5, 0x61] },
        { "a bin claiming 2 GiB", [0x92, 0x00, 0x93, 0x01, 0xC6, 0x7F, 0xFF, 0xFF, 0xFF, 0x01] },
        { "an array claiming 2^31 elements", [0xDD, 0x7F, 0xFF, 0xFF, 0xFF] },
        { "a map claiming 2^31 entries inside a message", [0x92, 0x03, 0x95, 0x01, 0xA1, 0x61, 0xA1, 0x62, 0xC0, 0xDF, 0x7F, 0xFF, 0xFF, 0xFF] },
    };

    [Theory]
    [MemberData(nameof(GarbageBodies))]
    public void DecodeBody_Garbage_ThrowsProtocolExceptionOnly(string what, byte[] body)
    {
        var error = Record.Exception(() => FrameCodec.DecodeBody(new ReadOnlySequence<byte>(body), FrameCodec.UntrustedOptions));

        Assert.True(error is ProtocolException, $"{what}: expected a ProtocolException, got {error?.GetType().Name ?? "no exception"}");
    }

    [Fact]
    public void DecodeBody_NilWhereTheFieldMayNotBeNull_NamesTheField()
    {
        // [14, [1, 2, nil]]: a Log whose Message is nil.
        var body = new ReadOnlySequence<byte>(new byte[] { 0x92, 0x0E, 0x93, 0x01, 0x02, 0xC0 });

        var error = Assert.Throws<ProtocolException>(() => FrameCodec.DecodeBody(body, FrameCodec.UntrustedOptions));
        Assert.Equal("Malformed Log: Message is nil.", error.Message);
    }

    [Fact]
    public void DecodeBody_NilWhereTheFieldMayBeNull_IsAccepted()
    {
        // [6, [11, 0, nil]]: DeviceAdded with no detail.
        var body = new ReadOnlySequence<byte>(new byte[] { 0x92, 0x06, 0x93, 0x0B, 0x00, 0xC0 });

        var added = Assert.IsType<DeviceAdded>(FrameCodec.DecodeBody(body, FrameCodec.UntrustedOptions));
        Assert.Null(added.Detail);
    }

    [Fact]
    public void DecodeBody_TrailingBytesAfterAMessage_Throws()
    {
        var frame = FrameCodec.Encode(new Ping(5));
        var body = new ReadOnlySequence<byte>([.. frame[4..], 0x01]);

        var error = Assert.Throws<ProtocolException>(() => FrameCodec.DecodeBody(body, FrameCodec.UntrustedOptions));
        Assert.Contains("left after the message", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DecodeBody_NestedThousandDeep_ThrowsWithoutOverflowingTheStack()
    {
        // [12, [[[[...]]]]]: a Ping whose payload is an array nested 1000 deep.
        var body = new byte[] { 0x92, 0x0C }.Concat(Enumerable.Repeat((byte)0x91, 1000)).Append((byte)0x01).ToArray();

        Assert.Throws<ProtocolException>(() => FrameCodec.DecodeBody(new ReadOnlySequence<byte>(body), FrameCodec.UntrustedOptions));
    }

    [Fact]
    public void DecodeBody_BufferFields_AreCopiesThatOutliveTheFrame()
    {
        // The receive loop hands the frame's memory back to the pipe as soon as a message is
        // decoded; a buffer field that still pointed into it would change under the kernel.
        var frame = FrameCodec.Encode(new Complete(1, 2, NtStatus.Success, 3, new byte[] { 1, 2, 3 }));
        var sequence = new ReadOnlySequence<byte>(frame);
        Assert.True(FrameCodec.TryReadFrame(ref sequence, ProtocolConstants.DefaultMaxFrameSize, out var body));
        var complete = Assert.IsType<Complete>(FrameCodec.DecodeBody(body, FrameCodec.UntrustedOptions));

        Array.Clear(frame);

        Assert.Equal(new byte[] { 1, 2, 3 }, complete.Data.ToArray());
    }

    [Fact]
    public void WriteFrame_MessageOverTheLimit_Throws()
    {
        var big = new Complete(1, 1, NtStatus.Success, 0, new byte[2048]);

        var error = Assert.Throws<ProtocolException>(() => FrameCodec.Encode(big, maxFrameSize: 1024));
        Assert.Contains("frame limit is 1024", error.Message, StringComparison.Ordinal);
    }

    /// <summary>A printable form of a message that compares buffers and maps by content.</summary>
    internal static string Describe(Message message) =>
        message.GetType().Name + "{" + string.Join("; ", message.GetType().GetProperties()
            .Where(p => p.Name != "EqualityContract")
            .Select(p => $"{p.Name}={Value(p.GetValue(message))}")) + "}";

    private static string Value(object? value) => value switch
    {
        null => "null",
        byte[] bytes => Convert.ToHexString(bytes),
        ReadOnlyMemory<byte> memory => Convert.ToHexString(memory.Span),
        Dictionary<string, string> map => string.Join(",", map.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}:{kv.Value}")),
        FaultSpec[] faults => string.Join("|", faults.Select(f => $"{f.Index},{f.Fault},{f.Trigger},{f.Value},{f.Repeat},{f.Seed},{Value(f.Parameters)}")),
        _ => value.ToString() ?? "",
    };
}

/// <summary>Builds multi-segment sequences, as a pipe hands them over.</summary>
internal sealed class Segments : ReadOnlySequenceSegment<byte>
{
    private Segments(ReadOnlyMemory<byte> memory, long runningIndex)
    {
        Memory = memory;
        RunningIndex = runningIndex;
    }

    public static ReadOnlySequence<byte> Of(params byte[][] parts)
    {
        var first = new Segments(parts[0], 0);
        var last = first;
        foreach (var part in parts.Skip(1))
        {
            var next = new Segments(part, last.RunningIndex + last.Memory.Length);
            last.Next = next;
            last = next;
        }

        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }
}
