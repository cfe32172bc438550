using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using DriverIsolation.Cli.Nbd;
using DriverIsolation.Kernel;
using static DriverIsolation.Tests.NbdWire;

namespace DriverIsolation.Tests;

/// <summary>
/// The NBD server's requests taken by the kernel's ring reader of the disk's host while it spins
/// for the host's answers (<c>NbdServer.RequestIntake</c>, <see cref="Protocol.IRingCompanion"/>):
/// a real kernel, the VBlock driver in its own host process on the ring transport, the server in
/// this process, a client speaking NBD by hand. Whichever thread takes a request, its reply and its
/// data are right; a request split anywhere is put together; garbage ends that connection only; a
/// host killed and restarted gets the connection's requests again.
/// </summary>
[Collection("processes")]
public sealed class NbdRequestIntakeTests
{
    /// <summary>Pipelined rounds until the reader has taken requests (a bound, never reached in
    /// practice: the reader spins after every answer it reads, and the next round comes at once).</summary>
    private const int MaxRounds = 2000;

    [Fact]
    public async Task PipelinedRequests_AreTakenByTheRingReader_AndEveryReplyAndItsDataIsRight()
    {
        await using var serve = await Served.StartAsync();
        using var client = await serve.ConnectAsync();
        var stream = client.GetStream();

        await UntilTheReaderTakesAsync(serve, stream);
        Assert.Equal(1, serve.Server.RingReaderAttachments);

        // And once it takes them, still right.
        for (var i = 0; i < 20; i++)
        {
            await WriteThenReadBackAsync(stream, seed: MaxRounds + i);
        }

    }

    [Fact]
    public async Task RequestsSplitAnywhere_ArePutTogether_AndGarbageEndsThatConnectionOnly()
    {
        await using var serve = await Served.StartAsync();
        using (var client = await serve.ConnectAsync())
        {
            var stream = client.GetStream();
            var block = new byte[4096];
            new Random(7).NextBytes(block);

            // A write cut in its header, between header and data, in the data; its reply; then a
            // read of it cut in its header.
            await SendCutAsync(stream, Request(1, 1, 12288, block.Length, block), 10, 28, 28 + 1000);
            Assert.Equal((0u, 1UL), await ReadReplyAsync(stream));
            await SendCutAsync(stream, Request(0, 2, 12288, block.Length), 5);
            Assert.Equal((0u, 2UL), await ReadReplyAsync(stream));
            Assert.Equal(block, await ReadAsync(stream, block.Length));

            // Garbage after a good request: that request is answered, then the server hangs up.
            await stream.WriteAsync(Request(0, 3, 12288, 512).Concat("this is not an NBD request at all"u8.ToArray()).ToArray());
            Assert.Equal((0u, 3UL), await ReadReplyAsync(stream));
            Assert.Equal(block[..512], await ReadAsync(stream, 512));
            Assert.Equal(0, await stream.ReadAsync(new byte[1]).AsTask().Bounded());
        }

        await serve.Logged("a request without its magic").Bounded();

        // Another client is served.
        using var other = await serve.ConnectAsync();
        await WriteThenReadBackAsync(other.GetStream(), seed: 1);
    }

    [Fact]
    public async Task HundredsOfRequestsInOneSend_AreAllAnswered()
    {
        // More than one poll of the reader takes (and more than the 64 slots): TRIMs, errors and
        // reads in one burst, each answered once.
        await using var serve = await Served.StartAsync();
        using var client = await serve.ConnectAsync();
        var stream = client.GetStream();
        await WriteThenReadBackAsync(stream, seed: 5);
        var burst = Enumerable.Range(0, 300).SelectMany(i => (i % 3) switch
        {
            0 => Request(4, (ulong)i, i * 4096L, 4096), // TRIM
            1 => Request(0, (ulong)i, 1, 512), // unaligned: EINVAL
            _ => Request(0, (ulong)i, i * 4096L, 512),
        }).ToArray();
        await stream.WriteAsync(burst);
        var answered = new List<ulong>();
        for (var i = 0; i < 300; i++)
        {
            var (error, cookie) = await ReadReplyAsync(stream);
            Assert.Equal(cookie % 3 == 1 ? 22u : 0u, error);
            if (cookie % 3 == 2)
            {
                await ReadAsync(stream, 512);
            }

            answered.Add(cookie);
        }

        Assert.Equal(Enumerable.Range(0, 300).Select(i => (ulong)i), answered.Order());
    }

    [Fact]
    public async Task ClientsThatHangUpInARequest_OrSayDisc_EndTheirConnections_AndTheServerStops()
    {
        var serve = await Served.StartAsync();
        try
        {
            // In a big write's data (the connection's thread reads it, past the buffer), in a
            // small write's data, in a header: each connection ends, and owes nothing.
            var big = new byte[1 << 20];
            foreach (var (bytes, at) in new[] { (Request(1, 1, 0, big.Length, big), 28 + 100_000), (Request(1, 2, 0, 4096, new byte[4096]), 28 + 1000), (Request(0, 3, 0, 4096), 20) })
            {
                using var client = await serve.ConnectAsync();
                await WriteThenReadBackAsync(client.GetStream(), seed: at);
                await client.GetStream().WriteAsync(bytes.AsMemory(0, at));
            }

            await serve.Logged("the client hung up in the middle of a write's data").Bounded();
            await serve.Logged("the client hung up in the middle of a request").Bounded();

            // DISC: the server hangs up.
            using (var client = await serve.ConnectAsync())
            {
                var stream = client.GetStream();
                await WriteThenReadBackAsync(stream, seed: 9);
                await stream.WriteAsync(Request(2, 4, 0, 0));
                Assert.Equal(0, await stream.ReadAsync(new byte[1]).AsTask().Bounded());
            }
        }
        finally
        {
            // Every connection gave back its slots and closed its handle: the server stops.
            await serve.DisposeAsync().AsTask().Bounded();
        }

        Assert.Equal(0, serve.Kernel.OutstandingIrps);
    }

    /// <summary>Sends <paramref name="bytes"/> in pieces, cut at <paramref name="cuts"/>, each
    /// piece its own segment (no delay on the client's socket).</summary>
    private static async Task SendCutAsync(NetworkStream stream, byte[] bytes, params int[] cuts)
    {
        var sent = 0;
        foreach (var cut in cuts.Append(bytes.Length))
        {
            await stream.WriteAsync(bytes.AsMemory(sent, cut - sent));
            sent = cut;
        }
    }

    [Fact]
    public async Task AHostKilledAndRestarted_HasTheNextHostsReaderTakeTheRequests()
    {
        await using var serve = await Served.StartAsync();
        using var client = await serve.ConnectAsync();
        var stream = client.GetStream();
        var rounds = await UntilTheReaderTakesAsync(serve, stream);

        Assert.Equal(1, serve.Server.RingReaderAttachments);
        var restarted = serve.Kernel.Events.WaitForAsync(KernelEventKind.DriverRestarted);
        serve.Kernel.KillDriverHost("VBlock");
        await restarted.Bounded();

        // The client goes on as if nothing happened (the requests of the dead host are retried);
        // within a second of traffic the connection attaches to the new host's reader, which then
        // takes requests too.
        var taken = serve.Server.TakenByRingReader;
        var bound = Stopwatch.StartNew();
        while ((serve.Server.RingReaderAttachments < 2 || serve.Server.TakenByRingReader == taken) && bound.Elapsed < Waits.Default)
        {
            if (serve.Server.RingReaderAttachments < 2)
            {
                taken = serve.Server.TakenByRingReader;
            }

            await WriteThenReadBackAsync(stream, seed: rounds++);
        }

        Assert.Equal(2, serve.Server.RingReaderAttachments);
        Assert.True(serve.Server.TakenByRingReader > taken, "the new host's reader took no request");
        Assert.Equal(1, serve.Kernel.GetDrivers().Single().Restarts);
    }

    /// <summary>Pipelined rounds (<see cref="WriteThenReadBackAsync"/>) until the ring reader has
    /// taken a request; how many it took.</summary>
    private static async Task<int> UntilTheReaderTakesAsync(Served serve, NetworkStream stream)
    {
        var rounds = 0;
        while (serve.Server.TakenByRingReader == 0 && rounds < MaxRounds)
        {
            await WriteThenReadBackAsync(stream, seed: rounds++);
        }

        Assert.True(serve.Server.TakenByRingReader > 0, $"the ring reader took no request in {rounds} rounds of eight");
        return rounds;
    }

    /// <summary>Eight writes of distinct blocks sent in one go, their eight replies (in any order),
    /// then eight reads of them in one go, each reply's data compared with what was written.</summary>
    private static async Task WriteThenReadBackAsync(NetworkStream stream, int seed)
    {
        var random = new Random(seed);
        var blocks = Enumerable.Range(0, 8).Select(_ =>
        {
            var block = new byte[4096];
            random.NextBytes(block);
            return block;
        }).ToArray();
        var first = random.Next(4096 - 8);
        await stream.WriteAsync(blocks.SelectMany((b, i) => Request(1, (ulong)i, (first + i) * 4096L, b.Length, b)).ToArray());
        var written = new List<ulong>();
        for (var i = 0; i < blocks.Length; i++)
        {
            var (error, cookie) = await ReadReplyAsync(stream);
            Assert.Equal(0u, error);
            written.Add(cookie);
        }

        Assert.Equal(Enumerable.Range(0, 8).Select(i => (ulong)i), written.Order());
        await stream.WriteAsync(blocks.SelectMany((b, i) => Request(0, 100 + (ulong)i, (first + i) * 4096L, b.Length)).ToArray());
        var read = new List<ulong>();
        for (var i = 0; i < blocks.Length; i++)
        {
            var (error, cookie) = await ReadReplyAsync(stream);
            Assert.Equal(0u, error);
            Assert.Equal(blocks[(int)cookie - 100], await ReadAsync(stream, 4096));
            read.Add(cookie);
        }

        Assert.Equal(Enumerable.Range(100, 8).Select(i => (ulong)i), read.Order());
    }

    /// <summary>A kernel with VBlock in its own host on the ring (continuations on the reader, as
    /// <c>serve --transport ring --run-to-completion</c>), and an NBD server for it.</summary>
    private sealed class Served : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly List<string> _log = [];
        private readonly List<(string Text, TaskCompletionSource Seen)> _watches = [];
        private Task _running = Task.CompletedTask;

        private Served(Microkernel kernel) => Kernel = kernel;

        public Microkernel Kernel { get; }

        public NbdServer Server { get; private set; } = null!;

        public int Port => Server.LocalEndpoint.Port;

        public static async Task<Served> StartAsync()
        {
            var kernel = new Microkernel(new KernelOptions
            {
                HeartbeatPeriod = null,
                InlineCompletions = true,
                Transport = Transport.Ring,
                WarmPoolSize = 0,
            });
            var served = new Served(kernel);
            try
            {
                await kernel.StartAsync([TestManifests.Sample("VBlock") with { Recovery = new RecoveryPolicy { InFlight = InFlightPolicy.Retry } }], IsolationModel.Process).Bounded();
                served.Server = new NbdServer(kernel, new IPEndPoint(IPAddress.Loopback, 0), served.Log);
                await served.Server.StartAsync(CancellationToken.None).Bounded();
                served._running = served.Server.RunAsync(served._stop.Token);
                return served;
            }
            catch
            {
                await served.DisposeAsync();
                throw;
            }
        }

        /// <summary>A client connected to VBlock0 (16 MiB), past the handshake, in transmission.</summary>
        public async Task<TcpClient> ConnectAsync()
        {
            var client = new TcpClient { NoDelay = true };
            try
            {
                Assert.Equal(16L << 20, await OpenExportAsync(client, "127.0.0.1", Port, "VBlock0"));
                return client;
            }
            catch
            {
                client.Dispose();
                throw;
            }
        }

        /// <summary>Completes once the server has logged a line containing <paramref name="text"/>.</summary>
        public Task Logged(string text)
        {
            lock (_log)
            {
                if (_log.Any(l => l.Contains(text, StringComparison.Ordinal)))
                {
                    return Task.CompletedTask;
                }

                var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _watches.Add((text, seen));
                return seen.Task;
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await _running.Bounded();
            if (Server is not null)
            {
                await Server.DisposeAsync().AsTask().Bounded();
            }

            await Kernel.DisposeAsync().AsTask().Bounded();
            _stop.Dispose();
        }

        private void Log(string line)
        {
            lock (_log)
            {
                _log.Add(line);
                foreach (var watch in _watches.Where(w => line.Contains(w.Text, StringComparison.Ordinal)).ToList())
                {
                    watch.Seen.TrySetResult();
                    _watches.Remove(watch);
                }
            }
        }
    }
}
