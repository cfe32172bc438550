namespace DriverIsolation.Drivers.RamDisk;

/// <summary>The device extension: the media and its geometry. Requests may arrive on several
/// threads at once; one lock keeps every transfer whole (a copy of a few KiB is short).</summary>
internal sealed class RamDiskDevice(int bytesPerSector, long sectorCount)
{
    private readonly byte[] _media = new byte[bytesPerSector * sectorCount];
    private readonly Lock _lock = new();

    public int BytesPerSector { get; } = bytesPerSector;

    public long SectorCount { get; } = sectorCount;

    public long Length => _media.LongLength;

    /// <summary>Checks a transfer: whole sectors, inside the disk. A read starting at or past the
    /// end is EndOfFile; one that starts inside but runs past it is InvalidParameter.</summary>
    public NtStatus Validate(long offset, int length, bool isRead)
    {
        if (offset < 0 || length < 0 || offset % BytesPerSector != 0 || length % BytesPerSector != 0)
        {
            return NtStatus.InvalidParameter;
        }

        if (offset >= Length)
        {
            return isRead ? NtStatus.EndOfFile : NtStatus.InvalidParameter;
        }

        return offset + length > Length ? NtStatus.InvalidParameter : NtStatus.Success;
    }

    public void Read(long offset, Span<byte> destination)
    {
        lock (_lock)
        {
            _media.AsSpan((int)offset, destination.Length).CopyTo(destination);
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        lock (_lock)
        {
            source.CopyTo(_media.AsSpan((int)offset));
        }
    }
}
