using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using static DriverIsolation.Tests.NbdWire;

namespace DriverIsolation.Tests;

/// <summary>
/// <c>drviso serve</c> exporting its block devices over NBD to storage tools nobody here wrote:
/// nbdinfo, qemu-img, qemu-io, nbdcopy and fio (with its own data verification), every request
/// travelling the real path (kernel, isolated VBlock host, the virtual disk's DMA through the
/// IOMMU). fio's verify run stays clean while the storage driver's host is SIGKILLed again and
/// again. A client that breaks the protocol loses its own connection and nothing else.
/// </summary>
[Collection("processes")]
public sealed class NbdTests : IDisposable
{
    private static readonly TimeSpan ToolTimeout = TimeSpan.FromMinutes(2);
    private readonly string _scratch = Directory.CreateTempSubdirectory("drviso-nbd-").FullName;

    public void Dispose() => Directory.Delete(_scratch, recursive: true);

    [Fact]
    public async Task Serve_StandardClients_SeeTheExportsAndMoveDataByteIdentical()
    {
        await NbdTools.EnsureAsync();
        await using var serve = await ServeProcess.StartAsync("--nbd", "127.0.0.1:0");
        var uri = $"nbd://{serve.Endpoint}/VBlock0";

        var info = await Tool("nbdinfo", uri);
        Assert.Equal(0, info.ExitCode);
        Assert.Contains("export=\"VBlock0\"", info.Output, StringComparison.Ordinal);
        Assert.Contains("export-size: 16777216", info.Output, StringComparison.Ordinal);
        Assert.Contains("block_size_minimum: 512", info.Output, StringComparison.Ordinal);

        var list = await Tool("nbdinfo", "--list", $"nbd://{serve.Endpoint}");
        Assert.Equal(0, list.ExitCode);
        Assert.Contains("export=\"RamDisk0\"", list.Output, StringComparison.Ordinal);
        Assert.Contains("export=\"VBlock0\"", list.Output, StringComparison.Ordinal);

        var unknown = await Tool("nbdinfo", $"nbd://{serve.Endpoint}/NoSuchDisk");
        Assert.NotEqual(0, unknown.ExitCode);
        Assert.Contains("server replied with error to opt_go request: No such file or directory for export: NoSuchDisk", unknown.Output, StringComparison.Ordinal);

        var image = await Tool("qemu-img", "info", uri);
        Assert.Equal(0, image.ExitCode);
        Assert.Contains("virtual size: 16 MiB (16777216 bytes)", image.Output, StringComparison.Ordinal);

        var io = await Tool("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M", uri);
        Assert.Equal(0, io.ExitCode);
        Assert.Contains("wrote 1048576/1048576 bytes at offset 0", io.Output, StringComparison.Ordinal);
        Assert.Contains("read 1048576/1048576 bytes at offset 0", io.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("verification failed", io.Output, StringComparison.OrdinalIgnoreCase);

        // The check can fail: the data there is 0xab, not 0xcd.
        var wrong = await Tool("qemu-io", "-f", "raw", "-c", "read -P 0xcd 0 4k", uri);
        Assert.Contains("Pattern verification failed at offset 0", wrong.Output, StringComparison.Ordinal);

        var original = Path.Combine(_scratch, "in.img");
        var copy = Path.Combine(_scratch, "out.img");
        var bytes = new byte[16 << 20];
        new Random(7).NextBytes(bytes);
        await File.WriteAllBytesAsync(original, bytes);
        var copyIn = await Tool("nbdcopy", original, uri);
        Assert.Equal(0, copyIn.ExitCode);
        var copyOut = await Tool("nbdcopy", uri, copy);
        Assert.Equal(0, copyOut.ExitCode);
        var back = await File.ReadAllBytesAsync(copy);
        Assert.True(bytes.AsSpan().SequenceEqual(back), "the copy back differs from the file copied in");

        Assert.DoesNotContain("unexpected error", serve.Output, StringComparison.Ordinal);
    }

    /// <param name="runToCompletion">Also with routines and continuations on the rings' readers,
    /// where a burst of replies is sent at once (<see cref="DriverIsolation.Kernel.CompletionBatch"/>).</param>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Serve_FioVerifyWhileTheStorageHostIsKilled_NoVerifyErrorsAndEveryKillHidden(bool runToCompletion)
    {
        await NbdTools.EnsureAsync();
        string[] mode = runToCompletion ? ["--transport", "ring", "--run-to-completion"] : [];
        await using var serve = await ServeProcess.StartAsync(["--nbd", "127.0.0.1:0", "--chaos-kill-every", "300ms", .. mode]);
        var killsBefore = serve.Count("Chaos: killing VBlock");

        // The same verified job again until the host has been killed at least five times while
        // fio ran (a fast machine finishes one job within fewer kill periods); every run checks
        // every block it wrote.
        var kills = 0;
        for (var run = 1; run <= 10 && kills < 5; run++)
        {
            var fio = await Tool("fio", "--name=verify", "--ioengine=nbd", $"--uri=nbd://{serve.Endpoint}/VBlock0",
                "--rw=randrw", "--bs=4k", "--iodepth=8", "--size=8M", "--verify=crc32c", "--output-format=json");
            kills = serve.Count("Chaos: killing VBlock") - killsBefore;

            Assert.True(fio.ExitCode == 0, $"fio run {run} failed:\n{fio.Output}\n--- serve:\n{serve.Output}");
            using var report = JsonDocument.Parse(fio.Output[fio.Output.IndexOf('{', StringComparison.Ordinal)..]);
            var job = report.RootElement.GetProperty("jobs")[0];
            Assert.Equal(0, job.GetProperty("error").GetInt32());
            Assert.True(job.GetProperty("write").GetProperty("total_ios").GetInt64() > 0);

            // Every block written is read back and checked (the verify pass) besides the job's own reads.
            Assert.True(job.GetProperty("read").GetProperty("total_ios").GetInt64() >= job.GetProperty("write").GetProperty("total_ios").GetInt64());
        }

        Assert.True(kills >= 5, $"only {kills} kills happened during ten fio runs");
        Assert.DoesNotContain("unexpected error", serve.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("quarantined", serve.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_ClientBreakingTheProtocol_GetsErrorsOrLosesItsConnection_OthersServed()
    {
        await NbdTools.EnsureAsync();
        await using var serve = await ServeProcess.StartAsync("--nbd", "127.0.0.1:0");
        var (host, port) = (serve.Endpoint[..serve.Endpoint.LastIndexOf(':')], int.Parse(serve.Endpoint[(serve.Endpoint.LastIndexOf(':') + 1)..], System.Globalization.CultureInfo.InvariantCulture));

        using (var client = new TcpClient())
        {
            await client.ConnectAsync(host, port).Bounded();
            var stream = client.GetStream();
            var hello = await ReadAsync(stream, 18);
            Assert.Equal("NBDMAGIC", Encoding.ASCII.GetString(hello, 0, 8));
            Assert.Equal(0x49484156454F5054UL, BinaryPrimitives.ReadUInt64BigEndian(hello.AsSpan(8)));
            await stream.WriteAsync(new byte[] { 0, 0, 0, 3 }); // fixed newstyle, no zeroes

            // GO to an export that does not exist: NBD_REP_ERR_UNKNOWN, and the haggling goes on.
            await SendGoAsync(stream, "NoSuchDisk");
            var (_, type, _) = await ReadOptionReplyAsync(stream);
            Assert.Equal(0x80000006u, type);

            await SendGoAsync(stream, "VBlock0");
            var size = 0L;
            while (true)
            {
                var (_, replyType, data) = await ReadOptionReplyAsync(stream);
                if (replyType == 1)
                {
                    break;
                }

                Assert.Equal(3u, replyType);
                if (BinaryPrimitives.ReadUInt16BigEndian(data) == 0)
                {
                    size = BinaryPrimitives.ReadInt64BigEndian(data.AsSpan(2));
                }
            }

            Assert.Equal(16L << 20, size);

            // A write, a flush, a read back: the data went to the disk and came back.
            var block = new byte[4096];
            new Random(3).NextBytes(block);
            await SendRequestAsync(stream, 1, cookie: 1, offset: 8192, block.Length, block);
            Assert.Equal((0u, 1UL), await ReadReplyAsync(stream));
            await SendRequestAsync(stream, 3, cookie: 2, offset: 0, 0);
            Assert.Equal((0u, 2UL), await ReadReplyAsync(stream));
            await SendRequestAsync(stream, 0, cookie: 3, offset: 8192, block.Length);
            Assert.Equal((0u, 3UL), await ReadReplyAsync(stream));
            Assert.Equal(block, await ReadAsync(stream, block.Length));

            // Unaligned, past the end: EINVAL, and the connection stays usable.
            await SendRequestAsync(stream, 0, cookie: 4, offset: 1, 512);
            Assert.Equal((22u, 4UL), await ReadReplyAsync(stream));
            await SendRequestAsync(stream, 0, cookie: 5, offset: size, 512);
            Assert.Equal((22u, 5UL), await ReadReplyAsync(stream));
            await SendRequestAsync(stream, 1, cookie: 6, offset: size - 512, 1024, new byte[1024]);
            Assert.Equal((28u, 6UL), await ReadReplyAsync(stream));

            // Garbage instead of a request: the server hangs up on this client.
            await stream.WriteAsync(Encoding.ASCII.GetBytes("this is not an NBD request at all"));
            var buffer = new byte[1];
            Assert.Equal(0, await stream.ReadAsync(buffer).AsTask().Bounded());
        }

        // Everyone else is still served.
        var io = await Tool("qemu-io", "-f", "raw", "-c", "read -P 0 0 4k", $"nbd://{serve.Endpoint}/VBlock0");
        Assert.Equal(0, io.ExitCode);
        Assert.Contains("read 4096/4096 bytes at offset 0", io.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("unexpected error", serve.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_ClientsSilentInTheHandshakeOrTakingNoReplies_AreHungUpOnAfterTheClientTimeout_OthersServed()
    {
        await NbdTools.EnsureAsync();
        var timeout = TimeSpan.FromSeconds(2);
        await using var serve = await ServeProcess.StartAsync("--nbd", "127.0.0.1:0", "--nbd-client-timeout", "2s", "--verbose");
        var (host, port) = (serve.Endpoint[..serve.Endpoint.LastIndexOf(':')], int.Parse(serve.Endpoint[(serve.Endpoint.LastIndexOf(':') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
        var replyNotTaken = serve.WaitForLineAsync("disconnected: a reply could not be sent");

        // A client that connects and says nothing: after the server's greeting, the end of the stream.
        using (var silent = new TcpClient())
        {
            await silent.ConnectAsync(host, port).Bounded();
            var greeted = Stopwatch.StartNew();
            var silentStream = silent.GetStream();
            await ReadAsync(silentStream, 18);
            Assert.Equal(0, await silentStream.ReadAsync(new byte[1]).AsTask().Bounded());
            Assert.True(greeted.Elapsed >= timeout - TimeSpan.FromMilliseconds(100), $"hung up on after {greeted.Elapsed}, before the {timeout} timeout");
        }

        using var client = new TcpClient { ReceiveBufferSize = 4096 };
        await client.ConnectAsync(host, port).Bounded();
        var stream = client.GetStream();
        await ReadAsync(stream, 18);
        await stream.WriteAsync(new byte[] { 0, 0, 0, 3 });
        await SendGoAsync(stream, "VBlock0");
        while ((await ReadOptionReplyAsync(stream)).Type != 1)
        {
        }

        // Eight reads of the whole disk (128 MiB of replies), and not a byte of them taken: the
        // first reply fills the socket's buffers and stops there.
        var stalled = Stopwatch.StartNew();
        for (var cookie = 1UL; cookie <= 8; cookie++)
        {
            await SendRequestAsync(stream, 0, cookie, offset: 0, 16 << 20);
        }

        // Everyone else is served meanwhile, and after.
        var io = await Tool("qemu-io", "-f", "raw", "-c", "read 0 4k", $"nbd://{serve.Endpoint}/VBlock0");
        Assert.Equal(0, io.ExitCode);
        Assert.Contains("read 4096/4096 bytes at offset 0", io.Output, StringComparison.Ordinal);

        await replyNotTaken.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(stalled.Elapsed >= timeout, $"hung up on after {stalled.Elapsed}, before the {timeout} timeout");
        Assert.Equal(1, serve.Count("disconnected: a reply could not be sent"));
        io = await Tool("qemu-io", "-f", "raw", "-c", "read 0 4k", $"nbd://{serve.Endpoint}/VBlock0");
        Assert.Equal(0, io.ExitCode);
        Assert.DoesNotContain("unexpected error", serve.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Serve_Scenario_BootsItsMachineAndDrivers_AndExportsItsDisks()
    {
        await NbdTools.EnsureAsync();
        var scenario = RepositoryFile("scenarios/channel-file-291.json");
        await using var serve = await ServeProcess.StartAsync("--scenario", scenario, "--nbd", "127.0.0.1:0");

        // The channel-file scenario's drivers, the sensor (its faults not armed) above the disk.
        Assert.Contains("│ Sensor ", serve.Output, StringComparison.Ordinal);
        Assert.Contains(", exports: VBlock0 (16777216 bytes)", serve.Output, StringComparison.Ordinal);
        var io = await Tool("qemu-io", "-f", "raw", "-c", "write -P 0x29 4k 64k", "-c", "read -P 0x29 4k 64k", $"nbd://{serve.Endpoint}/VBlock0");
        Assert.Equal(0, io.ExitCode);
        Assert.Contains("read 65536/65536 bytes at offset 4096", io.Output, StringComparison.Ordinal);

        var both = await Drviso.RunAsync("serve", "--scenario", scenario, "--manifests", _scratch, "--nbd", "off");
        Assert.NotEqual(0, both.ExitCode);
        Assert.Contains("--manifests and --scenario both name the drivers: give one", both.Output, StringComparison.Ordinal);
    }

    private static string RepositoryFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, relative)))
            {
                return Path.Combine(dir.FullName, relative);
            }
        }

        throw new FileNotFoundException(relative);
    }

    private static Task<(int ExitCode, string Output)> Tool(string program, params string[] args) => NbdTools.RunAsync(program, args, ToolTimeout);

    /// <summary>A running <c>drviso serve</c>: its NBD endpoint, its output so far (drained all
    /// the time so it never blocks on a full pipe), and its process tree killed on dispose.</summary>
    private sealed class ServeProcess : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly ConcurrentQueue<string> _lines = new();
        private readonly List<(string Text, TaskCompletionSource Seen)> _watches = [];
        private Task _drain = Task.CompletedTask;

        private ServeProcess(Process process) => _process = process;

        public string Endpoint { get; private set; } = "";

        public string Output => string.Join('\n', _lines);

        public int Count(string text) => _lines.Count(l => l.Contains(text, StringComparison.Ordinal));

        /// <summary>Completes when serve prints a line containing <paramref name="text"/> (at once if it has).</summary>
        public Task WaitForLineAsync(string text)
        {
            var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_watches)
            {
                _watches.Add((text, seen));
            }

            if (Count(text) > 0)
            {
                seen.TrySetResult();
            }

            return seen.Task;
        }

        public static async Task<ServeProcess> StartAsync(params string[] args)
        {
            var serve = new ServeProcess(Process.Start(Drviso.StartInfo(["serve", .. args]))!);
            try
            {
                const string Prefix = "NBD: listening on nbd://";
                while (await serve._process.StandardOutput.ReadLineAsync().Bounded() is { } line)
                {
                    serve._lines.Enqueue(line);
                    if (line.StartsWith(Prefix, StringComparison.Ordinal))
                    {
                        serve.Endpoint = line[Prefix.Length..line.IndexOf(',', StringComparison.Ordinal)];
                        serve._drain = Task.WhenAll(serve.DrainAsync(serve._process.StandardOutput), serve.DrainAsync(serve._process.StandardError));
                        return serve;
                    }
                }

                throw new InvalidOperationException($"drviso serve ended without listening for NBD:\n{serve.Output}\n{await serve._process.StandardError.ReadToEndAsync()}");
            }
            catch
            {
                await serve.DisposeAsync();
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }

            await _process.WaitForExitAsync().Bounded();
            await _drain.Bounded();
            _process.Dispose();
        }

        private async Task DrainAsync(StreamReader reader)
        {
            while (await reader.ReadLineAsync() is { } line)
            {
                _lines.Enqueue(line);
                lock (_watches)
                {
                    foreach (var (text, seen) in _watches)
                    {
                        if (line.Contains(text, StringComparison.Ordinal))
                        {
                            seen.TrySetResult();
                        }
                    }
                }
            }
        }
    }
}
