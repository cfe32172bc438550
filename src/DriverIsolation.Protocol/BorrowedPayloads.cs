using System.Buffers;
using MessagePack;
using MessagePack.Formatters;
using MessagePack.Resolvers;

namespace DriverIsolation.Protocol;

/// <summary>
/// Reading options under which a message's byte payloads (<see cref="ReadOnlyMemory{T}"/>
/// fields: a completion's data, a pass-down's input) are not new arrays but slices of one buffer
/// the connection owns. A payload so read is valid until the connection's next read; whoever keeps
/// it longer must copy it. The kernel handles each host message before it reads the next, and
/// copies what it keeps, so its hot path allocates nothing for payloads.
/// </summary>
internal sealed class BorrowingOptions : MessagePackSerializerOptions
{
    private static readonly IFormatterResolver BorrowingResolver = CompositeResolver.Create([new BorrowedBytesFormatter()], [StandardResolver.Instance]);

    private byte[] _arena = new byte[4096];
    private int _used;

    public BorrowingOptions(MessagePackSerializerOptions options)
        : base(options.WithResolver(BorrowingResolver))
    {
    }

    private BorrowingOptions(BorrowingOptions copyFrom)
        : base(copyFrom)
    {
    }

    /// <summary>A new message is read: the payloads of the one before are given up.</summary>
    public void Reset() => _used = 0;

    /// <summary>Copies a payload into the arena and returns where it is.</summary>
    public ReadOnlyMemory<byte> Borrow(in ReadOnlySequence<byte> bytes)
    {
        var length = checked((int)bytes.Length);
        if (_arena.Length - _used < length)
        {
            // Slices handed out earlier for this message keep the old array alive.
            _arena = new byte[Math.Max(_arena.Length * 2, _used + length)];
            _used = 0;
        }

        var memory = _arena.AsMemory(_used, length);
        bytes.CopyTo(memory.Span);
        _used += length;
        return memory;
    }

    protected override MessagePackSerializerOptions Clone() => new BorrowingOptions(this);

    /// <summary>bin on the wire, as the standard formatter writes it; read into the arena when the
    /// options are borrowing ones, into a new array otherwise.</summary>
    private sealed class BorrowedBytesFormatter : IMessagePackFormatter<ReadOnlyMemory<byte>>
    {
        public void Serialize(ref MessagePackWriter writer, ReadOnlyMemory<byte> value, MessagePackSerializerOptions options) =>
            writer.Write(value.Span);

        public ReadOnlyMemory<byte> Deserialize(ref MessagePackReader reader, MessagePackSerializerOptions options)
        {
            if (reader.ReadBytes() is not { } bytes)
            {
                return default;
            }

            return options is BorrowingOptions borrowing ? borrowing.Borrow(bytes) : bytes.ToArray();
        }
    }
}
