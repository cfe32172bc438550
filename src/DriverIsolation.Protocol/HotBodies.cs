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
