using System.Buffers.Binary;

namespace DriverIsolation.Disk;

/// <summary>Control codes every disk driver in this project understands (the ntdddisk.h of the
/// simulated system).</summary>
public static class DiskIoControl
{
    /// <summary>Returns a <see cref="DiskGeometry"/> (IOCTL_DISK_GET_DRIVE_GEOMETRY's number).</summary>
    public static readonly uint GetDriveGeometry = IoControlCode.Make(DeviceType.Disk, 0x0000);

    /// <summary>Returns the disk length in bytes as a little-endian Int64 (IOCTL_DISK_GET_LENGTH_INFO's number).</summary>
    public static readonly uint GetLengthInfo = IoControlCode.Make(DeviceType.Disk, 0x0017, IoControlMethod.Buffered, IoControlCode.ReadAccess);
}

/// <summary>The geometry of a disk: sector size and sector count, 16 bytes on the wire.</summary>
public readonly record struct DiskGeometry(int BytesPerSector, long SectorCount)
{
    public const int EncodedSize = 16;

    public long LengthBytes => BytesPerSector * SectorCount;

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteInt64LittleEndian(destination, BytesPerSector);
        BinaryPrimitives.WriteInt64LittleEndian(destination[8..], SectorCount);
    }

    public static DiskGeometry Read(ReadOnlySpan<byte> source) =>
        new((int)BinaryPrimitives.ReadInt64LittleEndian(source), BinaryPrimitives.ReadInt64LittleEndian(source[8..]));
}
