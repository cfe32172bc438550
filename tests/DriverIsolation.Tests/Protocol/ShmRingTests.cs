using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.IO.Pipes;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>
/// The shared-memory ring: frames come out whole and in order across wraps and a full ring; an
/// index or length a hostile producer publishes is refused with a ProtocolException, never read
/// past; and a connection that switches to the rings delivers both ways, waking a reader that
/// sleeps (on its own thread, on the ring's futex), and lets the reader drain what a peer wrote
/// before it went away.
/// </summary>
public sealed class ShmRingTests : IDisposable
{
    private const int Capacity = 4096;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"drviso-ring-test-{Guid.NewGuid():N}");
    private readonly MemoryMappedFile _file;

    public ShmRingTests()
    {
        using (var stream = new FileStream(_path, FileMode.CreateNew))
        {
            stream.SetLength(ShmRing.SizeFor(Capacity));
        }

        _file = MemoryMappedFile.CreateFromFile(_path, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite);
    }

    public void Dispose()
    {
        _file.Dispose();
        File.Delete(_path);
    }

    [Fact]
    public void RandomFrames_ComeOutWholeAndInOrder_AcrossWrapsAndAFullRing()
    {
        using var producer = ShmRing.Map(_file, 0, Capacity);
        using var consumer = ShmRing.Map(_file, 0, Capacity);
        var random = new Random(5);
        var sent = new Queue<byte[]>();
        var received = 0;
        var buffer = new byte[16];
        var wasFull = 0;
        for (var i = 0; i < 5000; i++)
        {
            var frame = new byte[random.Next(1, 900)];
            random.NextBytes(frame);
            while (!producer.TryWrite(frame))
            {
                wasFull++;
                Assert.True(Drain(1));
            }

            sent.Enqueue(frame);
            if (random.Next(3) == 0)
            {
                Drain(random.Next(1, 4));
            }
        }

        while (Drain(1))
        {
        }

        Assert.Empty(sent);
        Assert.Equal(5000, received);
        Assert.True(wasFull > 100, $"the ring was full {wasFull} times");

        bool Drain(int count)
        {
            for (var n = 0; n < count; n++)
            {
                var length = consumer.TryRead(ref buffer, 1 << 20);
                if (length == 0)
                {
                    return false;
                }

                Assert.Equal(sent.Dequeue(), buffer[..length]);
                received++;
            }

            return true;
        }
    }

    [Fact]
    public void AFrameLargerThanHalfTheRing_IsRefused()
    {
        using var producer = ShmRing.Map(_file, 0, Capacity);
        Assert.Throws<ProtocolException>(() => producer.TryWrite(new byte[Capacity / 2]));
        Assert.True(producer.TryWrite(new byte[(Capacity / 2) - 8]));
    }

    public static TheoryData<string, long, uint, string> Corruptions => new()
    {
        { "tail beyond the ring", Capacity + 8, 16, "Corrupt ring: the producer's tail" },
        { "tail before the head", -8, 16, "Corrupt ring: the producer's tail" },
        { "unaligned tail", 20, 12, "Corrupt ring: the producer's tail" },
        { "length past the tail", 16, 100, "Corrupt ring: a frame of 100 bytes runs past" },
        { "empty frame", 16, 0, "Empty frame in the ring" },
        { "oversized frame", 16, 5000, "Oversized frame in the ring: the length prefix says 5000 bytes, the limit is 4096" },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void WhatAHostilePeerPublishes_IsCheckedBeforeAnythingIsRead(string what, long tail, uint length, string error)
    {
        using var consumer = ShmRing.Map(_file, 0, Capacity);
        using (var view = _file.CreateViewAccessor(0, ShmRing.SizeFor(Capacity)))
        {
            view.Write(0, tail);
            view.Write(ShmRing.HeaderSize, length);
        }

        var buffer = new byte[8];
        var refused = Assert.Throws<ProtocolException>(() => consumer.TryRead(ref buffer, 4096));

        Assert.True(refused.Message.StartsWith(error, StringComparison.Ordinal), $"{what}: {refused.Message}");
        Assert.Equal(8, buffer.Length);
    }

    [Fact]
    public async Task Connection_SwitchedToRings_DeliversBothWays_WakesASleepingReader_AndDrainsAfterThePeerLeft()
    {
        var (serverPipe, clientPipe) = await ConnectedPipesAsync();
        await using var serverDisposal = serverPipe;
        await using var clientDisposal = clientPipe;
        var kernel = new FrameConnection(serverPipe, untrustedPeer: true);
        var host = new FrameConnection(clientPipe, untrustedPeer: false);

        Assert.True(kernel.OfferRing(Path.GetTempPath(), 4 << 20, TimeSpan.FromMicroseconds(20)));
        Assert.True(kernel.UsesRing);
        Assert.True(kernel.Send(new Ping(1)));

        // The host reads UseRing on the pipe, maps the rings, answers, and reads Ping 1 from its ring.
        Assert.Equal(new Ping(1), await host.ReadAsync().AsTask().Bounded());
        Assert.True(host.UsesRing);
        Assert.True(host.Send(new Pong(1, 42, 43)));
        Assert.Equal(new Pong(1, 42, 43), await kernel.ReadAsync().AsTask().Bounded());

        // Bursts of 100, the next one sent only once the reader has taken the last: in between,
        // the reader finds its ring empty and goes to sleep, and the next burst must
        // wake it. Every message arrives, in order.
        using var drained = new SemaphoreSlim(0);
        var reading = Task.Run(async () =>
        {
            var got = new List<long>();
            for (var i = 0; i < 2000; i++)
            {
                got.Add(Assert.IsType<Ping>(await host.ReadAsync()).Sequence);
                if (i % 100 == 99)
                {
                    drained.Release();
                }
            }

            return got;
        });
        for (var i = 0; i < 2000; i++)
        {
            kernel.Send(new Ping(i));
            if (i % 100 == 99)
            {
                Assert.True(await drained.WaitAsync(TimeSpan.FromSeconds(30)));
            }
        }

        Assert.Equal(Enumerable.Range(0, 2000).Select(i => (long)i), await reading.Bounded());
        Assert.Empty(Directory.GetFiles(Path.GetTempPath(), $"drviso-ring-{Environment.ProcessId}-*"));

        // What the host put in its ring before it went away is read before the end.
        var data = new byte[3000];
        new Random(1).NextBytes(data);
        host.Send(new Complete(7, 3, NtStatus.Success, data.Length, data));
        await host.DisposeAsync();
        var complete = Assert.IsType<Complete>(await kernel.ReadAsync().AsTask().Bounded());
        Assert.Equal(data, complete.Data.ToArray());
        Assert.Null(await kernel.ReadAsync().AsTask().Bounded());
        await kernel.DisposeAsync();
    }

    [Fact]
    public async Task RingControlMessages_WhereTheyDoNotBelong_AreProtocolViolations()
    {
        var (serverPipe, clientPipe) = await ConnectedPipesAsync();
        await using var serverDisposal = serverPipe;
        await using var clientDisposal = clientPipe;
        await using var kernel = new FrameConnection(serverPipe, untrustedPeer: true);
        await using var host = new FrameConnection(clientPipe, untrustedPeer: false);

        // A host that answers RingReady to no offer, or offers rings to the kernel.
        host.Send(new RingReady(4096));
        var refused = await Assert.ThrowsAsync<ProtocolException>(() => kernel.ReadAsync().AsTask()).Bounded();
        Assert.Equal("Unexpected RingReady: the rings were not offered that way.", refused.Message);
        Assert.Equal(refused.Message, kernel.CloseReason);
    }

    [Fact]
    public async Task ReaderOfAnEmptyRing_SleepsOnAThreadOfItsOwn_WakesThereForAFrame_AndForACancellation()
    {
        await using var pair = await RingPair.StartAsync();
        var (kernel, host) = (pair.Kernel, pair.Host);

        // The host's reader finds its ring empty and sleeps; a frame sent later wakes it, and the
        // reader's code goes on on the thread that slept (no thread-pool thread in between).
        var read = host.ReadAsync();
        Assert.False(read.IsCompleted); // It returns unfinished only once it spun and went to sleep.
        var woken = read.AsTask().ContinueWith(
            static t => (t.Result, Thread.CurrentThread.IsThreadPoolThread, Thread.CurrentThread.Name),
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        Assert.True(kernel.Send(new Ping(2)));
        var (message, onPool, thread) = await woken.Bounded();
        Assert.Equal(new Ping(2), message);
        Assert.False(onPool);
        Assert.Equal("ring reader", thread);

        // A sleeping read that is cancelled ends with OperationCanceledException; the next read
        // gets the next frame.
        using var cancel = new CancellationTokenSource();
        var cancelled = host.ReadAsync(cancel.Token).AsTask();
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled).Bounded();
        Assert.True(kernel.Send(new Ping(3)));
        Assert.Equal(new Ping(3), await host.ReadAsync().AsTask().Bounded());
    }

    [Fact]
    public async Task FrameOnThePipe_OnceTheRingsAreInUse_IsAProtocolViolation()
    {
        await using var pair = await RingPair.StartAsync();
        var kernel = pair.Kernel;

        // A host that writes a frame on the pipe behind the connection's back, while the kernel's
        // reader sleeps on the ring.
        var sleeping = kernel.ReadAsync().AsTask();
        await pair.ClientPipe.WriteAsync(FrameCodec.Encode(new Pong(2, 0, 0)));
        await pair.ClientPipe.FlushAsync();

        var refused = await Assert.ThrowsAsync<ProtocolException>(() => sleeping).Bounded();
        Assert.Equal("Unexpected Pong on the pipe: frames travel in the rings once they are in use.", refused.Message);
        Assert.Equal(refused.Message, kernel.CloseReason);
    }

    /// <summary>A kernel's and a host's connection on a fresh pipe, both reading and sending on
    /// the rings (one message has gone each way).</summary>
    private sealed record RingPair(NamedPipeServerStream ServerPipe, NamedPipeClientStream ClientPipe, FrameConnection Kernel, FrameConnection Host)
        : IAsyncDisposable
    {
        public static async Task<RingPair> StartAsync()
        {
            var (serverPipe, clientPipe) = await ConnectedPipesAsync();
            var pair = new RingPair(serverPipe, clientPipe, new FrameConnection(serverPipe, untrustedPeer: true), new FrameConnection(clientPipe, untrustedPeer: false));
            Assert.True(pair.Kernel.OfferRing(Path.GetTempPath(), 4 << 20, TimeSpan.FromMicroseconds(20)));
            Assert.True(pair.Kernel.Send(new Ping(1)));
            Assert.Equal(new Ping(1), await pair.Host.ReadAsync().AsTask().Bounded());
            Assert.True(pair.Host.Send(new Pong(1, 2, 3)));
            Assert.Equal(new Pong(1, 2, 3), await pair.Kernel.ReadAsync().AsTask().Bounded());
            return pair;
        }

        public async ValueTask DisposeAsync()
        {
            await Host.DisposeAsync();
            await Kernel.DisposeAsync();
            await ClientPipe.DisposeAsync();
            await ServerPipe.DisposeAsync();
        }
    }

    /// <summary>Both ends of a fresh named pipe, connected.</summary>
    private static async Task<(NamedPipeServerStream Server, NamedPipeClientStream Client)> ConnectedPipesAsync()
    {
        var name = $"drviso-test-{Guid.NewGuid():N}";
        var server = new NamedPipeServerStream(name, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        var client = new NamedPipeClientStream(".", name, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        await Task.WhenAll(server.WaitForConnectionAsync(), client.ConnectAsync()).Bounded();
        return (server, client);
    }
}
