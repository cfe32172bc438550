using System.IO.MemoryMappedFiles;

namespace DriverIsolation.Drivers.RamDisk;

/// <summary>
/// The device extension: the media and its geometry. The media is private memory, or, with the
/// <c>backingFile</c> parameter, a memory-mapped file (e.g. under /dev/shm) that outlives the
/// driver's process, so a restarted instance finds the data the old one wrote. Requests may arrive
/// on several threads at once; one lock keeps every transfer whole (a copy of a few KiB is short).
/// </summary>
internal sealed class RamDiskDevice
{
    private readonly byte[]? _memory;
    private readonly MemoryMappedViewAccessor? _mapped;
    private readonly Lock _lock = new();

    public RamDiskDevice(int bytesPerSector, long sectorCount, string? backingFile)
    {
        BytesPerSector = bytesPerSector;
        SectorCount = sectorCount;
        if (backingFile is null)
        {
            _memory = new byte[Length];
            return;
        }

        // Mapped once for the life of the driver instance; the OS releases it with the process.
        using var file = MemoryMappedFile.CreateFromFile(backingFile, FileMode.OpenOrCreate, mapName: null, Length, MemoryMappedFileAccess.ReadWrite);
        _mapped = file.CreateViewAccessor(0, Length);
    }

    public int BytesPerSector { get; }

    public long SectorCount { get; }

    public long Length => BytesPerSector * SectorCount;

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
            if (_memory is not null)
            {
                _memory.AsSpan((int)offset, destination.Length).CopyTo(destination);
            }
            else
            {
                _mapped!.SafeMemoryMappedViewHandle.ReadSpan((ulong)offset, destination);
            }
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> source)
    {
        lock (_lock)
        {
            if (_memory is not null)
            {
                source.CopyTo(_memory.AsSpan((int)offset));
            }
            else
            {
                _mapped!.SafeMemoryMappedViewHandle.WriteSpan((ulong)offset, source);
            }
        }
    }
}
