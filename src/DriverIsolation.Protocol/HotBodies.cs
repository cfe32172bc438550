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
