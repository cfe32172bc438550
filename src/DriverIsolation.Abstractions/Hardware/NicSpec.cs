using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace DriverIsolation.Hardware;

/// <summary>
/// The programming interface of the simulated NIC. The driver puts a transmit ring and a receive
/// ring of descriptors in DMA memory. To send, it fills descriptors and rings the transmit
/// doorbell with the new tail; the device reads each frame by DMA, marks the descriptor done and
/// interrupts (vector <see cref="VectorTransmit"/>). To receive, it posts empty buffers and rings
/// the receive doorbell; the device writes each arriving frame into the next posted buffer, sets
/// its length and done flag, and interrupts (vector <see cref="VectorReceive"/>).
/// </summary>
public static class NicSpec
{
    public const int RegTransmitRingBase = 0;
    public const int RegReceiveRingBase = 1;
    public const int RegRingSize = 2;
    public const int RegControl = 3;
    public const int RegTransmitTail = 4;
    public const int RegReceiveTail = 5;

    public const ulong ControlEnable = 1;

    public const int VectorTransmit = 0;
    public const int VectorReceive = 1;

    public const int DescriptorSize = 16;
    public const int MaxFrameBytes = 2048;
    public const int MaxRingSize = 1024;

    public const byte FlagDone = 1;

    /// <summary>Where a descriptor's flags sit. A device writes them last, after the rest of the
    /// descriptor, and a driver reads them first: a descriptor marked done is whole.</summary>
    public const int FlagsOffset = 10;

    public const byte StatusSuccess = 0;
    public const byte StatusDmaError = 1;
    public const byte StatusTooLong = 2;

    /// <summary>A descriptor: buffer address, length (a frame's; for receive, the buffer's
    /// capacity, replaced by the frame's length), flags and status.</summary>
    public static void WriteDescriptor(Span<byte> entry, ulong address, ushort length, byte flags = 0, byte status = 0)
    {
        entry[..DescriptorSize].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(entry, address);
        BinaryPrimitives.WriteUInt16LittleEndian(entry[8..], length);
        entry[FlagsOffset] = flags;
        entry[11] = status;
    }

    /// <summary>Reads a descriptor the device may be writing at the same moment: the flags first (an
    /// acquire), then the rest, so a descriptor seen done never shows its old length.</summary>
    public static (ulong Address, ushort Length, byte Flags, byte Status) ReadDescriptor(ReadOnlySpan<byte> entry)
    {
        var flags = Volatile.Read(ref Unsafe.AsRef(in entry[FlagsOffset]));
        return (BinaryPrimitives.ReadUInt64LittleEndian(entry), BinaryPrimitives.ReadUInt16LittleEndian(entry[8..]), flags, entry[11]);
    }
}
