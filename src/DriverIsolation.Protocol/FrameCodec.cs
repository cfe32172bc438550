using System.Buffers;
using System.Buffers.Binary;
using MessagePack;

namespace DriverIsolation.Protocol;

/// <summary>
/// The pure codec: frames and messages, no I/O.
/// <code>
///  0               4                              4 + length
///  +---------------+------------------------------+
///  | length (u32le)| MessagePack body (a Message) |
///  +---------------+------------------------------+
/// </code>
/// </summary>
public static class FrameCodec
{
    /// <summary>Options for reading bytes from an untrusted peer (the kernel reads every host
    /// frame with these): hash-flood-resistant collections and a low depth limit.</summary>
    public static readonly MessagePackSerializerOptions UntrustedOptions = MessagePackSerializerOptions.Standard
        .WithSecurity(MessagePackSecurity.UntrustedData.WithMaximumObjectGraphDepth(ProtocolConstants.MaxObjectGraphDepth));

    /// <summary>Options for writing (and for the host reading the kernel, which it trusts).</summary>
    public static readonly MessagePackSerializerOptions TrustedOptions = MessagePackSerializerOptions.Standard;

    /// <summary>
    /// Takes one whole frame off the front of <paramref name="buffer"/>. Returns false (and leaves
    /// the buffer alone) until the whole frame is there. The length is checked against
    /// <paramref name="maxFrameSize"/> before anything is sliced, so an oversized frame is refused
    /// from its header alone.
    /// </summary>
    /// <exception cref="ProtocolException">Empty or oversized frame.</exception>
    public static bool TryReadFrame(ref ReadOnlySequence<byte> buffer, int maxFrameSize, out ReadOnlySequence<byte> body)
    {
        body = default;
        if (buffer.Length < ProtocolConstants.FrameHeaderSize)
        {
            return false;
        }

        Span<byte> header = stackalloc byte[ProtocolConstants.FrameHeaderSize];
        buffer.Slice(0, ProtocolConstants.FrameHeaderSize).CopyTo(header);
        var length = BinaryPrimitives.ReadUInt32LittleEndian(header);
        if (length == 0)
        {
            throw new ProtocolException("Empty frame: the length prefix is 0.");
        }

        if (length > (uint)maxFrameSize)
        {
            throw new ProtocolException($"Oversized frame: the length prefix says {length} bytes, the limit is {maxFrameSize}.");
        }

        if (buffer.Length - ProtocolConstants.FrameHeaderSize < length)
        {
            return false;
        }

        body = buffer.Slice(ProtocolConstants.FrameHeaderSize, length);
        buffer = buffer.Slice(body.End);
        return true;
    }

    /// <summary>Decodes one frame body into a message: a two-element array of the message kind and
    /// the message's fields, exactly as many as the kind has, none of them nil unless the field
    /// may be null, and nothing after it.</summary>
    /// <exception cref="ProtocolException">The body is not exactly one valid message.</exception>
    public static Message DecodeBody(ReadOnlySequence<byte> body, MessagePackSerializerOptions options)
    {
        var reader = new MessagePackReader(body);
        MessageShapes.Shape shape;
        Message? message;
        try
        {
            shape = CheckShape(reader.CreatePeekReader());
            message = MessagePackSerializer.Deserialize<Message>(ref reader, options);
        }
        catch (Exception ex) when (ex is MessagePackSerializationException or EndOfStreamException or OverflowException or InvalidOperationException)
        {
            throw new ProtocolException($"Malformed message body ({body.Length} bytes): {Innermost(ex).Message}", ex);
        }

        if (message is null || message.GetType() != shape.Type)
        {
            throw new ProtocolException("Malformed message body: it does not decode to the message its kind names.");
        }

        if (!reader.End)
        {
            throw new ProtocolException($"Malformed message body: {reader.Sequence.Length - reader.Consumed} bytes left after the message.");
        }

        if (shape.FirstNilField(message) is { } nil)
        {
            throw new ProtocolException($"Malformed {shape.Type.Name}: {nil} is nil.");
        }

        return message;
    }

    private static MessageShapes.Shape CheckShape(MessagePackReader peek)
    {
        if (peek.NextMessagePackType != MessagePackType.Array || peek.ReadArrayHeader() != 2)
        {
            throw new ProtocolException("Malformed message body: expected [kind, fields].");
        }

        if (peek.NextMessagePackType != MessagePackType.Integer)
        {
            throw new ProtocolException("Malformed message body: the message kind is not an integer.");
        }

        var key = peek.ReadInt32();
        if (!MessageShapes.TryGet(key, out var shape))
        {
            throw new ProtocolException($"Malformed message body: unknown message kind {key}.");
        }

        if (peek.NextMessagePackType != MessagePackType.Array)
        {
            throw new ProtocolException($"Malformed {shape.Type.Name}: its fields are not an array.");
        }

        var count = peek.ReadArrayHeader();
        return count == shape.FieldCount
            ? shape
            : throw new ProtocolException($"Malformed {shape.Type.Name}: {count} fields, expected {shape.FieldCount}.");
    }

    /// <summary>Writes one framed message: the body is serialized into <paramref name="scratch"/>
    /// (so its length is known and checked), then header and body go to <paramref name="output"/>.</summary>
    /// <exception cref="ProtocolException">The message would exceed <paramref name="maxFrameSize"/>.</exception>
    public static void WriteFrame(IBufferWriter<byte> output, Message message, int maxFrameSize, ArrayBufferWriter<byte> scratch)
    {
        scratch.ResetWrittenCount();
        MessagePackSerializer.Serialize(scratch, message, TrustedOptions);
        var length = scratch.WrittenCount;
        if (length > maxFrameSize)
        {
            throw new ProtocolException($"Refusing to send a {message.GetType().Name} of {length} bytes: the frame limit is {maxFrameSize}.");
        }

        var span = output.GetSpan(ProtocolConstants.FrameHeaderSize + length);
        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)length);
        scratch.WrittenSpan.CopyTo(span[ProtocolConstants.FrameHeaderSize..]);
        output.Advance(ProtocolConstants.FrameHeaderSize + length);
    }

    /// <summary>Serializes a message body (no length prefix) into <paramref name="scratch"/> and
    /// returns it, checked against the frame limit.</summary>
    /// <exception cref="ProtocolException">The message would exceed <paramref name="maxFrameSize"/>.</exception>
    public static ReadOnlySpan<byte> SerializeBody(Message message, int maxFrameSize, ArrayBufferWriter<byte> scratch)
    {
        ArgumentNullException.ThrowIfNull(scratch);
        scratch.ResetWrittenCount();
        MessagePackSerializer.Serialize(scratch, message, TrustedOptions);
        return scratch.WrittenCount <= maxFrameSize
            ? scratch.WrittenSpan
            : throw new ProtocolException($"Refusing to send a {message.GetType().Name} of {scratch.WrittenCount} bytes: the frame limit is {maxFrameSize}.");
    }

    /// <summary>Writes a message body without a message object (see <see cref="IFrameBody"/>) into
    /// <paramref name="scratch"/> and returns it, checked against the frame limit.</summary>
    /// <exception cref="ProtocolException">The body would exceed <paramref name="maxFrameSize"/>.</exception>
    public static ReadOnlySpan<byte> SerializeBody<TBody>(in TBody body, int maxFrameSize, ArrayBufferWriter<byte> scratch)
        where TBody : struct, IFrameBody
    {
        ArgumentNullException.ThrowIfNull(scratch);
        scratch.ResetWrittenCount();
        var writer = new MessagePackWriter(scratch);
        body.Write(ref writer);
        writer.Flush();
        return scratch.WrittenCount <= maxFrameSize
            ? scratch.WrittenSpan
            : throw new ProtocolException($"Refusing to send a {body.Name} of {scratch.WrittenCount} bytes: the frame limit is {maxFrameSize}.");
    }

    /// <summary>Writes a length prefix and an encoded body to <paramref name="output"/>.</summary>
    public static void WriteFrame(IBufferWriter<byte> output, ReadOnlySpan<byte> body)
    {
        ArgumentNullException.ThrowIfNull(output);
        var span = output.GetSpan(ProtocolConstants.FrameHeaderSize + body.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)body.Length);
        body.CopyTo(span[ProtocolConstants.FrameHeaderSize..]);
        output.Advance(ProtocolConstants.FrameHeaderSize + body.Length);
    }

    /// <summary>Encodes a whole frame into a new array (tests, tools).</summary>
    public static byte[] Encode(Message message, int maxFrameSize = ProtocolConstants.DefaultMaxFrameSize)
    {
        var output = new ArrayBufferWriter<byte>();
        WriteFrame(output, message, maxFrameSize, new ArrayBufferWriter<byte>());
        return output.WrittenSpan.ToArray();
    }

    private static Exception Innermost(Exception ex)
    {
        while (ex.InnerException is not null)
        {
            ex = ex.InnerException;
        }

        return ex;
    }
}
