using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace DriverIsolation.Tests;

/// <summary>The NBD protocol from a client's side, by hand: for tests that send what no real
/// client would (pipelined requests split anywhere, garbage), and read every reply.</summary>
internal static class NbdWire
{
    /// <summary>Connects, does the fixed-newstyle handshake and GO to <paramref name="export"/>;
    /// the stream is then in transmission. Returns the export's size.</summary>
    public static async Task<long> OpenExportAsync(TcpClient client, string host, int port, string export)
    {
        await client.ConnectAsync(host, port).Bounded();
        var stream = client.GetStream();
        var hello = await ReadAsync(stream, 18);
        Assert.Equal("NBDMAGIC", Encoding.ASCII.GetString(hello, 0, 8));
        await stream.WriteAsync(new byte[] { 0, 0, 0, 3 }); // fixed newstyle, no zeroes
        await SendGoAsync(stream, export);
        var size = -1L;
        while (true)
        {
            var (_, type, data) = await ReadOptionReplyAsync(stream);
            if (type == 1)
            {
                return size;
            }

            Assert.Equal(3u, type);
            if (BinaryPrimitives.ReadUInt16BigEndian(data) == 0)
            {
                size = BinaryPrimitives.ReadInt64BigEndian(data.AsSpan(2));
            }
        }
    }

    /// <summary>One request's bytes: the header, then a write's data.</summary>
    public static byte[] Request(ushort type, ulong cookie, long offset, int length, byte[]? payload = null)
    {
        var request = new byte[28 + (payload?.Length ?? 0)];
        BinaryPrimitives.WriteUInt32BigEndian(request, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(request.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(request.AsSpan(8), cookie);
        BinaryPrimitives.WriteInt64BigEndian(request.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(request.AsSpan(24), (uint)length);
        payload?.CopyTo(request, 28);
        return request;
    }

    public static async Task SendGoAsync(NetworkStream stream, string name)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var message = new byte[16 + 4 + nameBytes.Length + 2];
        BinaryPrimitives.WriteUInt64BigEndian(message, 0x49484156454F5054UL);
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(8), 7);
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(12), (uint)(4 + nameBytes.Length + 2));
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(16), (uint)nameBytes.Length);
        nameBytes.CopyTo(message, 20);
        await stream.WriteAsync(message);
    }

    public static async Task<(uint Option, uint Type, byte[] Data)> ReadOptionReplyAsync(NetworkStream stream)
    {
        var header = await ReadAsync(stream, 20);
        Assert.Equal(0x3e889045565a9UL, BinaryPrimitives.ReadUInt64BigEndian(header));
        var data = await ReadAsync(stream, (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16)));
        return (BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)), BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)), data);
    }

    public static async Task SendRequestAsync(NetworkStream stream, ushort type, ulong cookie, long offset, int length, byte[]? payload = null) =>
        await stream.WriteAsync(Request(type, cookie, offset, length, payload));

    public static async Task<(uint Error, ulong Cookie)> ReadReplyAsync(NetworkStream stream)
    {
        var reply = await ReadAsync(stream, 16);
        Assert.Equal(0x67446698u, BinaryPrimitives.ReadUInt32BigEndian(reply));
        return (BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)), BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)));
    }

    public static async Task<byte[]> ReadAsync(NetworkStream stream, int length)
    {
        var buffer = new byte[length];
        await stream.ReadExactlyAsync(buffer).AsTask().Bounded();
        return buffer;
    }
}
