using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace DriverIsolation.Tests;

/// <summary>
/// <c>drviso demo --otlp</c> against a collector stand-in (an HTTP listener that keeps what it is
/// sent): the kernel exports its IRP spans and its metrics, and every host exports its own spans,
/// each as its own service.
/// </summary>
[Collection("processes")]
public sealed class OtlpExportTests : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly ConcurrentBag<(string Path, byte[] Body)> _received = [];
    private readonly string _endpoint;

    public OtlpExportTests()
    {
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            _endpoint = $"http://127.0.0.1:{((IPEndPoint)probe.LocalEndpoint).Port}/";
        }

        _listener.Prefixes.Add(_endpoint);
        _listener.Start();
        _ = CollectAsync();
    }

    public void Dispose() => _listener.Close();

    [Fact]
    public async Task Demo_ExportsKernelSpansAndMetrics_AndEveryHostItsOwnSpans()
    {
        var demo = await Drviso.RunAsync("demo", "--otlp", _endpoint);

        Assert.True(demo.ExitCode == 0, demo.Output);
        var traces = _received.Where(r => r.Path == "/v1/traces").Select(r => Encoding.UTF8.GetString(r.Body)).ToList();
        var metrics = _received.Where(r => r.Path == "/v1/metrics").Select(r => Encoding.UTF8.GetString(r.Body)).ToList();
        Assert.Contains(traces, t => t.Contains("drviso demo", StringComparison.Ordinal) && t.Contains("DriverIsolation.Kernel", StringComparison.Ordinal)
            && t.Contains(@"Read \Device\RamDisk0", StringComparison.Ordinal));
        foreach (var host in new[] { "RamDisk", "XorFilter", "VBlock" })
        {
            Assert.Contains(traces, t => t.Contains($"drvhost {host}", StringComparison.Ordinal) && t.Contains("DriverIsolation.DriverHost", StringComparison.Ordinal)
                && t.Contains($"{host}: Read", StringComparison.Ordinal));
        }

        Assert.Contains(metrics, m => m.Contains("drviso.irp.completed", StringComparison.Ordinal) && m.Contains("drviso.irp.duration", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Otlp_NotAnAddress_IsRefused()
    {
        var result = await Drviso.RunAsync("demo", "--otlp", "collector");

        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("--otlp: expected a collector's http(s) address like http://localhost:4318; got \"collector\"", result.Output, StringComparison.Ordinal);
    }

    private async Task CollectAsync()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception ex) when (ex is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }

            using var body = new MemoryStream();
            await context.Request.InputStream.CopyToAsync(body);
            _received.Add((context.Request.Url!.AbsolutePath, body.ToArray()));
            context.Response.StatusCode = 200;
            context.Response.Close();
        }
    }
}
