using System.IO.Pipes;
using System.Text.Json;

namespace DriverIsolation.Cli.Control;

/// <summary>Sends one request to a serving kernel and returns its answer.</summary>
internal static class ControlClient
{
    /// <summary>The kernel to talk to: the one named, or the only one serving.</summary>
    public static int ResolveKernel(int? kernelPid)
    {
        if (kernelPid is { } pid)
        {
            return pid;
        }

        var serving = ControlPipe.Serving();
        return serving.Count switch
        {
            1 => serving[0],
            0 => throw new InvalidOperationException("no kernel is serving on this machine (start one with: drviso serve)"),
            _ => throw new InvalidOperationException($"several kernels are serving (PIDs {string.Join(", ", serving)}): pick one with --kernel <pid>"),
        };
    }

    public static async Task<ControlResponse> SendAsync(int kernelPid, ControlRequest request)
    {
        await using var pipe = new NamedPipeClientStream(".", ControlPipe.NameFor(kernelPid), PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        try
        {
            await pipe.ConnectAsync(5000).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is TimeoutException or IOException)
        {
            throw new InvalidOperationException($"no kernel answers on PID {kernelPid}'s control pipe: {ex.Message}", ex);
        }

        using var reader = new StreamReader(pipe, leaveOpen: true);
        var writer = new StreamWriter(pipe, leaveOpen: true) { AutoFlush = true };
        await using (writer.ConfigureAwait(false))
        {
            await writer.WriteLineAsync(JsonSerializer.Serialize(request)).ConfigureAwait(false);
            var line = await reader.ReadLineAsync().ConfigureAwait(false)
                ?? throw new InvalidOperationException("the kernel closed the control pipe without answering");
            return JsonSerializer.Deserialize<ControlResponse>(line) ?? throw new InvalidOperationException("empty answer");
        }
    }
}
