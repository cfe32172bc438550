using System.Buffers;
using System.IO.MemoryMappedFiles;

namespace DriverIsolation.DriverHost;

/// <summary>
/// A range of a shared-memory file mapped into this process: the kernel maps all of simulated
/// physical memory this way, a driver host maps only the frames of its own DMA windows. The
/// memory is shared, not copied: what the host writes into a buffer is what the device reads.
/// </summary>
public sealed unsafe class MappedRegion : MemoryManager<byte>
{
    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _pointer;
    private int _disposed;

    private MappedRegion(MemoryMappedFile file, long offset, int length)
    {
        _file = file;
        _view = file.CreateViewAccessor(offset, length, MemoryMappedFileAccess.ReadWrite);
        byte* start = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref start);
        _pointer = start + _view.PointerOffset;
        Offset = offset;
        Length = length;
    }

    /// <summary>Where the region starts in the file (its physical address, for physical memory).</summary>
    public long Offset { get; }

    public int Length { get; }

    /// <summary>Creates (or truncates) the file at <paramref name="path"/> with <paramref name="length"/>
    /// zero bytes and maps all of it.</summary>
    public static MappedRegion Create(string path, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        // Mapped through the stream that made it: the file is never without an open handle (and
        // so a lock, see LeftoverFiles) between its making and its mapping.
        var stream = new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.ReadWrite);
        MemoryMappedFile file;
        try
        {
            stream.SetLength(length);
            file = MemoryMappedFile.CreateFromFile(stream, mapName: null, length, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
        }
        catch
        {
            stream.Dispose();
            throw;
        }

        try
        {
            return new MappedRegion(file, 0, length);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>Maps <paramref name="length"/> bytes at <paramref name="offset"/> of an existing file.</summary>
    public static MappedRegion Open(string path, long offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        var file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, mapName: null, capacity: 0, MemoryMappedFileAccess.ReadWrite);
        try
        {
            return new MappedRegion(file, offset, length);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return new Span<byte>(_pointer, Length);
    }

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elementIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(elementIndex, Length);
        return new MemoryHandle(_pointer + elementIndex, pinnable: this);
    }

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _file.Dispose();
    }
}
