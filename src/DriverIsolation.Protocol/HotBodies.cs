using System.Buffers;
using MessagePack;

namespace DriverIsolation.Protocol;

/// <summary>
/// A message body written straight into a frame, without a <see cref="Message"/> object on the
/// heap: for the two messages every request carries (<see cref="DispatchBody"/>,
/// <see cref="CompleteBody"/>). The bytes are exactly what the serializer writes for the message
/// record (<c>HotBodyTests</c> compares them), so the peer decodes them as usual.
/// </summary>
public interface IFrameBody
{
    /// <summary>The message's name, for errors.</summary>
    string Name { get; }

    /// <summary>Writes the body: <c>[kind, [fields...]]</c>.</summary>
    void Write(ref MessagePackWriter writer);
}

/// <summary>A <see cref="Dispatch"/>, written without one (K→H, one per IRP per layer).</summary>
public readonly record struct DispatchBody(
    long IrpId, int DeviceId, MajorFunction MajorFunction, byte MinorFunction, long FileId, long Offset, int Length,
    uint IoControlCode, ReadOnlyMemory<byte> Input, int OutputLength, string? TraceParent = null) : IFrameBody
{
    /// <summary>The union key of <see cref="Dispatch"/> (see <see cref="Message"/>).</summary>
    public const int Kind = 7;

    public string Name => nameof(Dispatch);

    public void Write(ref MessagePackWriter writer)
    {
        writer.WriteArrayHeader(2);
        writer.Write(Kind);
        writer.WriteArrayHeader(11);
        writer.Write(IrpId);
        writer.Write(DeviceId);
        writer.Write((byte)MajorFunction);
        writer.Write(MinorFunction);
        writer.Write(FileId);
        writer.Write(Offset);
        writer.Write(Length);
        writer.Write(IoControlCode);
        writer.Write(Input.Span);
        writer.Write(OutputLength);
        if (TraceParent is null)
        {
            writer.WriteNil();
        }
        else
        {
            writer.Write(TraceParent);
        }
    }
}

/// <summary>A <see cref="Complete"/>, written without one (H→K, one per IRP).</summary>
public readonly record struct CompleteBody(long IrpId, int DeviceId, NtStatus Status, long Information, ReadOnlyMemory<byte> Data) : IFrameBody
{
    /// <summary>The union key of <see cref="Complete"/> (see <see cref="Message"/>).</summary>
    public const int Kind = 8;

    public string Name => nameof(Complete);

    public void Write(ref MessagePackWriter writer)
    {
        writer.WriteArrayHeader(2);
        writer.Write(Kind);
        writer.WriteArrayHeader(5);
        writer.Write(IrpId);
        writer.Write(DeviceId);
        writer.Write((uint)Status);
        writer.Write(Information);
        writer.Write(Data.Span);
    }
}

/// <summary>
/// A <see cref="Complete"/> as a connection that borrows payloads reads it: one instance per
/// connection, overwritten by the connection's next read (as its <see cref="Data"/> is), so the
/// kernel's reader takes a host's completions without an object per request. Never sent.
/// </summary>
public sealed record ReceivedComplete : Message
{
    public long IrpId { get; private set; }

    public int DeviceId { get; private set; }

    public NtStatus Status { get; private set; }

    public long Information { get; private set; }

    /// <summary>Valid until the connection's next read.</summary>
    public ReadOnlyMemory<byte> Data { get; private set; }

    /// <summary>Reads <paramref name="body"/> into this instance if it is a well-formed
    /// <see cref="Complete"/> in the form the serializer writes: <c>[8, [irp, device, status,
    /// information, data]]</c> with nothing after it. False for anything else, which the
    /// serializer then decodes (or refuses) as usual, so a frame gets the same answer either way.</summary>
    internal bool TryRead(ReadOnlySequence<byte> body, BorrowingOptions payloads)
    {
        var reader = new MessagePackReader(body);
        try
        {
            if (!HotFields.TryHeader(ref reader, CompleteBody.Kind, 5)
                || !HotFields.TryInteger(ref reader, out var irpId) || !HotFields.TryInteger(ref reader, out var deviceId)
                || !HotFields.TryInteger(ref reader, out var status) || !HotFields.TryInteger(ref reader, out var information)
                || !HotFields.TryBytes(ref reader, out var bytes) || !reader.End)
            {
                return false;
            }

            // Each field as the serializer reads it: out of its type's range is an error there.
            var fields = (DeviceId: checked((int)deviceId), Status: (NtStatus)checked((uint)status));
            var data = bytes is { } payload ? payloads.Borrow(payload) : default;
            IrpId = irpId;
            DeviceId = fields.DeviceId;
            Status = fields.Status;
            Information = information;
            Data = data;
            return true;
        }
#pragma warning disable CA1031 // Whatever a hostile frame makes the reader throw, the serializer gets to answer it.
        catch (Exception)
#pragma warning restore CA1031
        {
            return false;
        }
    }
}

/// <summary>
/// A <see cref="Dispatch"/> as a host's connection reads it (one per connection, overwritten by
/// its next read), so a host takes the kernel's requests without a message object per request.
/// Its <see cref="Input"/> is a new array, as the serializer makes it: a driver may keep it.
/// Never sent.
/// </summary>
public sealed record ReceivedDispatch : Message
{
    public long IrpId { get; private set; }

    public int DeviceId { get; private set; }

    public MajorFunction MajorFunction { get; private set; }

    public byte MinorFunction { get; private set; }

    public long FileId { get; private set; }

    public long Offset { get; private set; }

    public int Length { get; private set; }

    public uint IoControlCode { get; private set; }

    public ReadOnlyMemory<byte> Input { get; private set; }

    public int OutputLength { get; private set; }

    public string? TraceParent { get; private set; }

    /// <summary>The request's fields, as a value.</summary>
    public DispatchBody Body => new(IrpId, DeviceId, MajorFunction, MinorFunction, FileId, Offset, Length, IoControlCode, Input, OutputLength, TraceParent);

    /// <summary>The fields of a <see cref="Dispatch"/> the serializer read, as a value.</summary>
    public static DispatchBody BodyOf(Dispatch d)
    {
        ArgumentNullException.ThrowIfNull(d);
        return new(d.IrpId, d.DeviceId, d.MajorFunction, d.MinorFunction, d.FileId, d.Offset, d.Length, d.IoControlCode, d.Input, d.OutputLength, d.TraceParent);
    }

    /// <summary>Reads <paramref name="body"/> into this instance if it is a well-formed
    /// <see cref="Dispatch"/> in the form the serializer writes; false for anything else, which
    /// the serializer then decodes (or refuses) as usual.</summary>
    internal bool TryRead(ReadOnlySequence<byte> body)
    {
        var reader = new MessagePackReader(body);
        try
        {
            if (!HotFields.TryHeader(ref reader, DispatchBody.Kind, 11)
                || !HotFields.TryInteger(ref reader, out var irpId) || !HotFields.TryInteger(ref reader, out var deviceId)
                || !HotFields.TryInteger(ref reader, out var major) || !HotFields.TryInteger(ref reader, out var minor)
                || !HotFields.TryInteger(ref reader, out var fileId) || !HotFields.TryInteger(ref reader, out var offset)
                || !HotFields.TryInteger(ref reader, out var length) || !HotFields.TryInteger(ref reader, out var ioControlCode)
                || !HotFields.TryBytes(ref reader, out var bytes) || !HotFields.TryInteger(ref reader, out var outputLength))
            {
                return false;
            }

            string? traceParent;
            switch (reader.NextMessagePackType)
            {
                case MessagePackType.String:
                    traceParent = reader.ReadString();
                    break;
                case MessagePackType.Nil:
                    reader.ReadNil();
                    traceParent = null;
                    break;
                default:
                    return false;
            }

            if (!reader.End)
            {
                return false;
            }

            // Each field as the serializer reads it: out of its type's range is an error there.
            var fields = (DeviceId: checked((int)deviceId), Major: checked((byte)major), Minor: checked((byte)minor), Length: checked((int)length),
                IoControlCode: checked((uint)ioControlCode), OutputLength: checked((int)outputLength));
            var input = bytes is { } payload ? payload.ToArray() : default;
            IrpId = irpId;
            DeviceId = fields.DeviceId;
            MajorFunction = (MajorFunction)fields.Major;
            MinorFunction = fields.Minor;
            FileId = fileId;
            Offset = offset;
            Length = fields.Length;
            IoControlCode = fields.IoControlCode;
            Input = input;
            OutputLength = fields.OutputLength;
            TraceParent = traceParent;
            return true;
        }
#pragma warning disable CA1031 // Whatever a malformed frame makes the reader throw, the serializer gets to answer it.
        catch (Exception)
#pragma warning restore CA1031
        {
            return false;
        }
    }
}

/// <summary>The fields of the hot messages as the serializer writes them; each reader declines
/// (false) anything in another form, and leaves it to the serializer.</summary>
internal static class HotFields
{
    /// <summary><c>[kind, [</c> exactly <paramref name="fields"/> fields.</summary>
    public static bool TryHeader(ref MessagePackReader reader, int kind, int fields) =>
        reader.NextMessagePackType == MessagePackType.Array && reader.ReadArrayHeader() == 2
        && reader.NextMessagePackType == MessagePackType.Integer && reader.ReadInt32() == kind
        && reader.NextMessagePackType == MessagePackType.Array && reader.ReadArrayHeader() == fields;

    /// <summary>The next field, if it is an integer that fits a long.</summary>
    public static bool TryInteger(ref MessagePackReader reader, out long value)
    {
        value = 0;
        if (reader.NextMessagePackType != MessagePackType.Integer)
        {
            return false;
        }

        value = reader.ReadInt64();
        return true;
    }

    /// <summary>The next field, if it is bin (its bytes, still in the frame) or nil (null).</summary>
    public static bool TryBytes(ref MessagePackReader reader, out ReadOnlySequence<byte>? bytes)
    {
        bytes = null;
        switch (reader.NextMessagePackType)
        {
            case MessagePackType.Binary:
                bytes = reader.ReadBytes();
                return true;
            case MessagePackType.Nil:
                reader.ReadNil();
                return true;
            default:
                return false;
        }
    }
}
