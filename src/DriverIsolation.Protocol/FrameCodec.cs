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

    /// <summary>Decodes one frame body into a message.</summary>
    /// <exception cref="ProtocolException">The body is not exactly one valid message.</exception>
    public static Message DecodeBody(ReadOnlySequence<byte> body, MessagePackSerializerOptions options)
    {
        Message? message;
        var reader = new MessagePackReader(body);
        try
        {
            message = MessagePackSerializer.Deserialize<Message>(ref reader, options);
        }
        catch (MessagePackSerializationException ex)
        {
            throw new ProtocolException($"Malformed message body ({body.Length} bytes): {Innermost(ex).Message}", ex);
        }

        if (message is null)
        {
            throw new ProtocolException("Malformed message body: it decodes to nil, not a message.");
        }

        if (!reader.End)
        {
            throw new ProtocolException($"Malformed message body: {reader.Sequence.Length - reader.Consumed} bytes left after the message.");
        }

        return message;
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
