using System.Diagnostics;
using System.Globalization;
using System.IO.Pipes;
using DriverIsolation.DriverHost;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>
/// drvhost as a real process, with the test playing its kernel: the host must exit by itself
/// when its kernel goes away, whether the kernel process dies or only its pipe closes.
/// </summary>
[Collection("processes")]
public sealed class DriverHostProcessTests : IAsyncDisposable
{
    private readonly List<Process> _processes = [];

    [Fact]
    public async Task DrvHost_KernelProcessDies_HostExitsWithKernelGone()
    {
        var fakeKernel = Start(new ProcessStartInfo("sleep", "600"));
        var (host, pipe, connection) = await StartHostAsync(fakeKernel.Id);
        Assert.False(host.HasExited);

        fakeKernel.Kill();
        await host.WaitForExitAsync().Bounded();

        Assert.Equal(ExitCodes.KernelGone, host.ExitCode);
        await connection.DisposeAsync();
        await pipe.DisposeAsync();
    }

    [Fact]
    public async Task DrvHost_KernelClosesThePipe_HostExitsWithKernelGone()
    {
        var (host, _, connection) = await StartHostAsync(Environment.ProcessId);
        Assert.False(host.HasExited);

        connection.Abort("test closes the pipe");
        await host.WaitForExitAsync().Bounded();

        Assert.Equal(ExitCodes.KernelGone, host.ExitCode);
    }

    [Fact]
    public async Task DrvHost_ShutdownMessage_HostExitsCleanly()
    {
        var (host, _, connection) = await StartHostAsync(Environment.ProcessId);

        connection.Send(new Shutdown("test"));
        await host.WaitForExitAsync().Bounded();

        Assert.Equal(ExitCodes.Shutdown, host.ExitCode);
        await connection.DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var process in _processes)
        {
            try
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync().Bounded();
            }
            catch (InvalidOperationException)
            {
                // Already gone.
            }

            process.Dispose();
        }
    }

    /// <summary>Spawns drvhost on a fresh pipe, as the kernel does, and completes the handshake.</summary>
    private async Task<(Process Host, NamedPipeServerStream Pipe, FrameConnection Connection)> StartHostAsync(int kernelPid)
    {
        var pipeName = $"drviso-test-{Guid.NewGuid():N}";
        var pipe = new NamedPipeServerStream(pipeName, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardInput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { Path.Combine(AppContext.BaseDirectory, "drvhost.dll"), "--pipe", pipeName, "--parent-pid", kernelPid.ToString(CultureInfo.InvariantCulture), "--name", "test" })
        {
            start.ArgumentList.Add(arg);
        }

        var host = Start(start);
        var token = new byte[ProtocolConstants.TokenLength];
        Random.Shared.NextBytes(token);
        await host.StandardInput.WriteLineAsync(Convert.ToHexString(token));
        host.StandardInput.Close();

        await pipe.WaitForConnectionAsync().Bounded();
        var connection = new FrameConnection(pipe, untrustedPeer: true);
        var hello = Assert.IsType<Hello>(await connection.ReadAsync().AsTask().Bounded());
        Assert.Equal(token, hello.Token);
        Assert.Equal(host.Id, hello.ProcessId);
        connection.Send(new Welcome(ProtocolConstants.Version, "test"));

        // A ping answered proves the host is past the handshake and serving.
        connection.Send(new Ping(1));
        Assert.Equal(1, Assert.IsType<Pong>(await connection.ReadAsync().AsTask().Bounded()).Sequence);
        return (host, pipe, connection);
    }

    private Process Start(ProcessStartInfo start)
    {
        var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {start.FileName}");
        _processes.Add(process);
        return process;
    }
}
