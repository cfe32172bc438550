using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;

namespace DriverIsolation.Protocol;

/// <summary>
/// One direction of the shared-memory transport: a single-producer, single-consumer ring of
/// frames in a memory-mapped file that both processes map. The records are the pipe's frames
/// (a little-endian length, then the MessagePack body), each 8-byte aligned; a record that would
/// run past the end of the data area is preceded by a wrap marker and starts again at 0.
/// <code>
///  0        64       128             256                        256 + capacity
///  +--------+--------+---------------+--------------------------+
///  | tail   | head   | consumer      | records ...              |
///  | (prod.)| (cons.)| waiting flag  |                          |
///  +--------+--------+---------------+--------------------------+
/// </code>
/// The producer owns <c>tail</c>, the consumer <c>head</c>; each keeps its own copy and only
/// publishes it, so a peer that scribbles over the header can confuse only what it reads, never
/// make this side read or write outside the ring: every index and length read from shared memory
/// is checked, and a record is copied out before it is decoded. A consumer about to sleep sets the
/// waiting flag; a producer that finds it set clears it and wakes the consumer: on Linux the flag
/// is a futex the consumer sleeps on (<see cref="Sleep"/>, <see cref="WakeSleeper"/>), elsewhere
/// a doorbell frame on the pipe wakes it (in <see cref="FrameConnection"/>).
/// </summary>
public sealed unsafe class ShmRing : IDisposable
{
    /// <summary>Bytes before the data area.</summary>
    public const int HeaderSize = 256;

    private const int TailOffset = 0;
    private const int HeadOffset = 64;
    private const int WaitingOffset = 128;
    private const uint WrapMarker = uint.MaxValue;

    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly byte* _data;
    private readonly long _capacity;
    private long _tail;
    private long _head;

    private ShmRing(MemoryMappedViewAccessor view, long capacity)
    {
        _view = view;
        _capacity = capacity;
        byte* pointer = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        _base = pointer + view.PointerOffset;
        _data = _base + HeaderSize;
    }

    /// <summary>Bytes of records the ring holds at most.</summary>
    public long Capacity => _capacity;

    /// <summary>Total bytes a ring of <paramref name="capacity"/> takes in the file.</summary>
    public static long SizeFor(long capacity) => HeaderSize + capacity;

    /// <summary>Maps the ring at <paramref name="offset"/> of a shared file (both sides call this on the same bytes).</summary>
    /// <param name="capacity">A power of two, at least 4 KiB.</param>
    public static ShmRing Map(MemoryMappedFile file, long offset, long capacity)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (capacity < 4096 || (capacity & (capacity - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "the ring's capacity must be a power of two of at least 4096 bytes");
        }

        return new ShmRing(file.CreateViewAccessor(offset, SizeFor(capacity)), capacity);
    }

    /// <summary>
    /// Producer: appends one frame (<paramref name="body"/> with its length prefix). False, with
    /// nothing written, when the ring has no room for it now.
    /// </summary>
    public bool TryWrite(ReadOnlySpan<byte> body)
    {
        var needed = Align(ProtocolConstants.FrameHeaderSize + body.Length);
        if (needed > _capacity / 2)
        {
            throw new ProtocolException($"Refusing a frame of {body.Length} bytes: a ring of {_capacity} bytes takes frames of at most {(_capacity / 2) - ProtocolConstants.FrameHeaderSize}.");
        }

        // The consumer's head, as published: never trusted further than the ring's bounds.
        var head = Math.Clamp(Volatile.Read(ref *(long*)(_base + HeadOffset)), _tail - _capacity, _tail);
        var position = _tail & (_capacity - 1);
        var contiguous = _capacity - position;
        var total = needed <= contiguous ? needed : contiguous + needed;
        if (_tail + total - head > _capacity)
        {
            return false;
        }

        if (needed > contiguous)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(_data + position, 4), WrapMarker);
            position = 0;
        }

        BinaryPrimitives.WriteUInt32LittleEndian(new Span<byte>(_data + position, 4), (uint)body.Length);
        body.CopyTo(new Span<byte>(_data + position + 4, body.Length));
        _tail += total;

        // A full fence, not only a release: the producer reads the waiting flag next, and that
        // read must not pass this store (or a consumer going to sleep could be missed).
        Interlocked.Exchange(ref *(long*)(_base + TailOffset), _tail);
        return true;
    }

    /// <summary>Bytes free for the producer now, as the indexes published say (a consumer may
    /// free more at any time).</summary>
    public long FreeBytes
    {
        get
        {
            var tail = Volatile.Read(ref *(long*)(_base + TailOffset));
            var head = Math.Clamp(Volatile.Read(ref *(long*)(_base + HeadOffset)), tail - _capacity, tail);
            return _capacity - (tail - head);
        }
    }

    /// <summary>
    /// Consumer: copies the next frame's body into <paramref name="into"/> (grown as needed) and
    /// returns its length; 0 when the ring is empty.
    /// </summary>
    /// <exception cref="ProtocolException">The producer published an index or a length that
    /// cannot be: the ring is corrupt (on the kernel's side, a hostile or broken host).</exception>
    public int TryRead(ref byte[] into, int maxFrameSize)
    {
        var tail = Volatile.Read(ref *(long*)(_base + TailOffset));
        if (tail == _head)
        {
            return 0;
        }

        if (tail - _head < 8 || tail - _head > _capacity || (tail & 7) != 0)
        {
            throw new ProtocolException($"Corrupt ring: the producer's tail {tail} is not within {_capacity} bytes after the consumer's head {_head}.");
        }

        var position = _head & (_capacity - 1);
        var length = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(_data + position, 4));
        var skipped = 0L;
        if (length == WrapMarker)
        {
            skipped = _capacity - position;
            position = 0;
            length = BinaryPrimitives.ReadUInt32LittleEndian(new ReadOnlySpan<byte>(_data, 4));
        }

        if (length == 0 || length > (uint)maxFrameSize)
        {
            throw new ProtocolException(length == 0
                ? "Empty frame in the ring: the length prefix is 0."
                : $"Oversized frame in the ring: the length prefix says {length} bytes, the limit is {maxFrameSize}.");
        }

        var record = Align(ProtocolConstants.FrameHeaderSize + (int)length);
        if (skipped + record > tail - _head || position + record > _capacity)
        {
            throw new ProtocolException($"Corrupt ring: a frame of {length} bytes runs past what the producer published.");
        }

        if (into.Length < length)
        {
            into = new byte[Math.Max(length, (uint)into.Length * 2)];
        }

        new ReadOnlySpan<byte>(_data + position + 4, (int)length).CopyTo(into);
        _head += skipped + record;
        Volatile.Write(ref *(long*)(_base + HeadOffset), _head);
        return (int)length;
    }

    /// <summary>Consumer: says it is about to sleep (then checks the ring once more).</summary>
    public void SetWaiting() => Interlocked.Exchange(ref *(int*)(_base + WaitingOffset), 1);

    /// <summary>Consumer: awake again.</summary>
    public void ClearWaiting() => Volatile.Write(ref *(int*)(_base + WaitingOffset), 0);

    /// <summary>Producer: true (once) if the consumer said it sleeps: the producer must wake it.</summary>
    public bool TakeWaiting() =>
        Volatile.Read(ref *(int*)(_base + WaitingOffset)) != 0 && Interlocked.Exchange(ref *(int*)(_base + WaitingOffset), 0) != 0;

    /// <summary>Consumer, after <see cref="SetWaiting"/> found the ring empty: sleeps until the
    /// producer wakes it (<see cref="WakeSleeper"/>), the flag is cleared, or the timeout passed.
    /// The caller looks again at the ring whatever woke it. False if it did not sleep (the flag
    /// was no longer set).</summary>
    internal bool Sleep(TimeSpan timeout) => Futex.Wait((int*)(_base + WaitingOffset), 1, timeout);

    /// <summary>Producer (or the consumer's own process, to end a sleep): wakes a consumer
    /// sleeping in <see cref="Sleep"/>.</summary>
    internal void WakeSleeper() => Futex.Wake((int*)(_base + WaitingOffset));

    /// <summary>True if the consumer has something to read now.</summary>
    public bool HasData => Volatile.Read(ref *(long*)(_base + TailOffset)) != _head;

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
    }

    private static int Align(int length) => (length + 7) & ~7;
}
