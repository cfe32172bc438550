using System.Buffers.Binary;
using System.IO.Pipes;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>The framed connection over a real named pipe (a Unix domain socket on Linux).</summary>
public sealed class FrameConnectionTests : IAsyncLifetime
{
    private NamedPipeServerStream _server = null!;
    private NamedPipeClientStream _client = null!;

    public async Task InitializeAsync()
    {
        var name = $"drviso-test-{Guid.NewGuid():N}";
        _server = new NamedPipeServerStream(name, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        _client = new NamedPipeClientStream(".", name, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        await Task.WhenAll(_server.WaitForConnectionAsync(), _client.ConnectAsync()).Bounded();
    }

    public async Task DisposeAsync()
    {
        await _server.DisposeAsync();
        await _client.DisposeAsync();
    }

    [Fact]
    public async Task Send_FromTwoThreadsAtOnce_EveryMessageArrivesOnceAndWhole()
    {
        var sender = new FrameConnection(_client, untrustedPeer: false);
        var receiver = new FrameConnection(_server, untrustedPeer: true);

        await Task.WhenAll(
            Task.Run(() => { for (var i = 0; i < 500; i++) { sender.Send(new Ping(i)); } }),
            Task.Run(() => { for (var i = 500; i < 1000; i++) { sender.Send(new Ping(i)); } })).Bounded();
        var seen = new List<long>();
        for (var i = 0; i < 1000; i++)
        {
            seen.Add(Assert.IsType<Ping>(await receiver.ReadAsync().AsTask().Bounded()).Sequence);
        }

        Assert.Equal(Enumerable.Range(0, 1000).Select(i => (long)i), seen.Order());
        Assert.Equal(seen.Where(s => s < 500), seen.Where(s => s < 500).Order());
        await sender.DisposeAsync();
        await receiver.DisposeAsync();
    }

    [Fact]
    public async Task ReadAsync_PeerDisposesCleanly_ReturnsNull()
    {
        var sender = new FrameConnection(_client, untrustedPeer: false);
        var receiver = new FrameConnection(_server, untrustedPeer: true);

        sender.Send(new Ping(1));
        await sender.DisposeAsync();

        Assert.IsType<Ping>(await receiver.ReadAsync().AsTask().Bounded());
        Assert.Null(await receiver.ReadAsync().AsTask().Bounded());
        Assert.Equal("peer closed the connection", receiver.CloseReason);
    }

    [Fact]
    public async Task DisposeAsync_RightAfterSending_DrainsEveryQueuedMessage()
    {
        var sender = new FrameConnection(_client, untrustedPeer: false);
        var receiver = new FrameConnection(_server, untrustedPeer: true);

        for (var i = 0; i < 100; i++)
        {
            sender.Send(new Log(1, 2, new string('x', 1000)));
        }

        await sender.DisposeAsync().AsTask().Bounded();
        var count = 0;
        while (await receiver.ReadAsync().AsTask().Bounded() is not null)
        {
            count++;
        }

        Assert.Equal(100, count);
    }

    [Fact]
    public async Task ReadAsync_PeerSendsHalfAFrameAndCloses_ThrowsTruncated()
    {
        var receiver = new FrameConnection(_server, untrustedPeer: true);
        var frame = FrameCodec.Encode(new Log(1, 2, "this frame will be cut"));

        await _client.WriteAsync(frame.AsMemory(0, frame.Length / 2));
        await _client.DisposeAsync();

        var error = await Assert.ThrowsAsync<ProtocolException>(() => receiver.ReadAsync().AsTask()).Bounded();
        Assert.Contains("Truncated", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ReadAsync_PeerAnnouncesAnOversizedFrame_ThrowsBeforeReadingIt()
    {
        var receiver = new FrameConnection(_server, untrustedPeer: true, maxFrameSize: 1024);
        var header = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(header, 1_000_000);

        await _client.WriteAsync(header);

        var error = await Assert.ThrowsAsync<ProtocolException>(() => receiver.ReadAsync().AsTask()).Bounded();
        Assert.Contains("Oversized", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Send_AfterAbort_ReturnsFalse()
    {
        var sender = new FrameConnection(_client, untrustedPeer: false);

        sender.Abort("test");

        Assert.False(sender.Send(new Ping(1)));
        Assert.Equal("test", sender.CloseReason);
        await sender.DisposeAsync();
    }
}
