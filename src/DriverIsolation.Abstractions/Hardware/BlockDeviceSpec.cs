using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace DriverIsolation.Hardware;

/// <summary>
/// The programming interface of the simulated block device (its "data sheet"), shared by the
/// device model and its driver. The driver puts a submission queue and a completion queue in DMA
/// memory, tells the device where they are, and rings the submission doorbell with the new tail;
/// the device reads each command, moves the data by DMA, writes a completion entry whose phase
/// bit flips on every pass through the queue, and interrupts (vector 0).
/// </summary>
public static class BlockDeviceSpec
{
    public const int SectorSize = 512;

    // Registers (write-only here; what a driver needs to know comes in Properties).
    public const int RegSubmissionQueueBase = 0;
    public const int RegCompletionQueueBase = 1;
    public const int RegQueueDepth = 2;
    public const int RegControl = 3;
    public const int RegSubmissionTail = 4;
    public const int RegCompletionHead = 5;

    public const ulong ControlEnable = 1;

    public const int CommandSize = 32;
    public const int CompletionSize = 16;
    public const int MaxQueueDepth = 1024;

    public const byte OpRead = 1;
    public const byte OpWrite = 2;
    public const byte OpFlush = 3;

    public const ushort StatusSuccess = 0;
    public const ushort StatusInvalidCommand = 1;
    public const ushort StatusOutOfRange = 2;
    public const ushort StatusDmaError = 3;

    /// <summary>Writes a command: opcode, command id, first sector, sector count, data address.</summary>
    public static void WriteCommand(Span<byte> entry, byte opcode, ushort commandId, ulong sector, uint sectors, ulong dataAddress)
    {
        entry[..CommandSize].Clear();
        entry[0] = opcode;
        BinaryPrimitives.WriteUInt16LittleEndian(entry[2..], commandId);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], sector);
        BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], sectors);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[24..], dataAddress);
    }

    public static (byte Opcode, ushort CommandId, ulong Sector, uint Sectors, ulong DataAddress) ReadCommand(ReadOnlySpan<byte> entry) =>
        (entry[0], BinaryPrimitives.ReadUInt16LittleEndian(entry[2..]), BinaryPrimitives.ReadUInt64LittleEndian(entry[8..]),
            BinaryPrimitives.ReadUInt32LittleEndian(entry[16..]), BinaryPrimitives.ReadUInt64LittleEndian(entry[24..]));

    /// <summary>Where a completion entry's phase byte sits. A device writes it last, after the rest of
    /// the entry is in memory, and a driver reads it first: an entry whose phase is new is whole.</summary>
    public const int CompletionPhaseOffset = 6;

    /// <summary>Writes a completion: command id, status, the device's submission-queue head, phase.</summary>
    public static void WriteCompletion(Span<byte> entry, ushort commandId, ushort status, ushort submissionHead, bool phase)
    {
        entry[..CompletionSize].Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(entry, commandId);
        BinaryPrimitives.WriteUInt16LittleEndian(entry[2..], status);
        BinaryPrimitives.WriteUInt16LittleEndian(entry[4..], submissionHead);
        entry[CompletionPhaseOffset] = phase ? (byte)1 : (byte)0;
    }

    /// <summary>Reads a completion the device may be writing at the same moment: the phase first
    /// (an acquire), then the rest. Read the other way round, an old entry's command id could pass
    /// for the new entry's, and complete the wrong command.</summary>
    public static (ushort CommandId, ushort Status, ushort SubmissionHead, bool Phase) ReadCompletion(ReadOnlySpan<byte> entry)
    {
        var phase = (Volatile.Read(ref Unsafe.AsRef(in entry[CompletionPhaseOffset])) & 1) != 0;
        return (BinaryPrimitives.ReadUInt16LittleEndian(entry), BinaryPrimitives.ReadUInt16LittleEndian(entry[2..]),
            BinaryPrimitives.ReadUInt16LittleEndian(entry[4..]), phase);
    }
}
