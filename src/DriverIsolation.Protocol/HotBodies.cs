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
            if (reader.NextMessagePackType != MessagePackType.Array || reader.ReadArrayHeader() != 2
                || reader.NextMessagePackType != MessagePackType.Integer || reader.ReadInt32() != CompleteBody.Kind
                || reader.NextMessagePackType != MessagePackType.Array || reader.ReadArrayHeader() != 5
                || reader.NextMessagePackType != MessagePackType.Integer)
            {
                return false;
            }

            var irpId = reader.ReadInt64();
            if (reader.NextMessagePackType != MessagePackType.Integer)
            {
                return false;
            }

            var deviceId = reader.ReadInt32();
            if (reader.NextMessagePackType != MessagePackType.Integer)
            {
                return false;
            }

            var status = (NtStatus)reader.ReadUInt32();
            if (reader.NextMessagePackType != MessagePackType.Integer)
            {
                return false;
            }

            var information = reader.ReadInt64();
            ReadOnlyMemory<byte> data;
            switch (reader.NextMessagePackType)
            {
                case MessagePackType.Binary:
                    data = payloads.Borrow(reader.ReadBytes()!.Value);
                    break;
                case MessagePackType.Nil:
                    reader.ReadNil();
                    data = default;
                    break;
                default:
                    return false;
            }

            if (!reader.End)
            {
                return false;
            }

            IrpId = irpId;
            DeviceId = deviceId;
            Status = status;
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
            if (reader.NextMessagePackType != MessagePackType.Array || reader.ReadArrayHeader() != 2
                || reader.NextMessagePackType != MessagePackType.Integer || reader.ReadInt32() != DispatchBody.Kind
                || reader.NextMessagePackType != MessagePackType.Array || reader.ReadArrayHeader() != 11)
            {
                return false;
            }

            if (!TryInteger(ref reader, out var irpId) || !TryInteger(ref reader, out var deviceId) || !TryInteger(ref reader, out var major)
                || !TryInteger(ref reader, out var minor) || !TryInteger(ref reader, out var fileId) || !TryInteger(ref reader, out var offset)
                || !TryInteger(ref reader, out var length) || !TryInteger(ref reader, out var ioControlCode))
            {
                return false;
            }

            ReadOnlyMemory<byte> input;
            switch (reader.NextMessagePackType)
            {
                case MessagePackType.Binary:
                    input = reader.ReadBytes()!.Value.ToArray();
                    break;
                case MessagePackType.Nil:
                    reader.ReadNil();
                    input = default;
                    break;
                default:
                    return false;
            }

            if (!TryInteger(ref reader, out var outputLength))
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

    /// <summary>The next field, if it is an integer that fits a long.</summary>
    private static bool TryInteger(ref MessagePackReader reader, out long value)
    {
        value = 0;
        if (reader.NextMessagePackType != MessagePackType.Integer)
        {
            return false;
        }

        value = reader.ReadInt64();
        return true;
    }
}
