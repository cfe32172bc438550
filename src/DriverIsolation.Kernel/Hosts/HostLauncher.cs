using System.Diagnostics;
using System.Globalization;
using System.IO.Pipes;
using System.Security.Cryptography;
using DriverIsolation.DriverHost;
using DriverIsolation.Protocol;
using Microsoft.Extensions.Logging;

namespace DriverIsolation.Kernel;

/// <summary>
/// Starts a drvhost process and brings its pipe up: a current-user-only pipe with an unguessable
/// name, a one-time token handed over on the child's standard input (never its command line),
/// and a handshake that checks the token, the protocol version and the PID the kernel spawned.
/// </summary>
internal sealed class HostLauncher(KernelOptions options, IoManager io, KernelEventLog events, ILoggerFactory loggerFactory, TimeProvider time)
{
    private readonly ILogger _logger = loggerFactory.CreateLogger("DriverIsolation.Kernel.Hosts");

    public async Task<ProcessHostChannel> StartAsync(string hostName, IsolationModel isolation, Action<ProcessHostChannel, string> onExited,
        CancellationToken cancellationToken, Func<ProcessHostChannel, Task>? ready = null, bool rehearse = false)
    {
        var pipeName = $"drviso-{Environment.ProcessId}-{RandomNumberGenerator.GetHexString(16, lowercase: true)}";
        var token = RandomNumberGenerator.GetBytes(ProtocolConstants.TokenLength);
        // Two instances: the host's, and after the handshake a guard that answers anyone else.
        var server = NewServer(pipeName);
        Process? process = null;
        try
        {
            process = Spawn(pipeName, hostName, rehearse);
            await process.StandardInput.WriteLineAsync(Convert.ToHexString(token).AsMemory(), cancellationToken).ConfigureAwait(false);
            process.StandardInput.Close();
            PumpOutput(process, hostName);

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(options.HostStartTimeout);
            var connected = server.WaitForConnectionAsync(timeout.Token);
            if (await Task.WhenAny(connected, process.WaitForExitAsync(timeout.Token)).ConfigureAwait(false) != connected)
            {
                throw new HostStartException(hostName, process.HasExited
                    ? $"exited before connecting: {ExitCodes.Describe(process.ExitCode)}"
                    : $"did not connect within {options.HostStartTimeout}");
            }

            await connected.ConfigureAwait(false);
            // The kernel handles each host message before it reads the next and copies the bytes it
            // keeps: payloads are borrowed from the connection, not an array per message.
            var connection = new FrameConnection(server, untrustedPeer: true, options.MaxFrameSize, borrowPayloads: true);
            var peerPid = PeerCredentials.TryGetProcessId(server);
            Message? hello;
            try
            {
                hello = await connection.ReadAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
                throw new HostStartException(hostName, $"connected but said nothing within {options.HostStartTimeout}");
            }

            var refusal = CheckHello(hello, token, process.Id, peerPid);
            if (refusal is not null)
            {
                Log.HandshakeRefused(_logger, hostName, refusal);
                connection.Send(new Refused(refusal));
                await connection.DisposeAsync().ConfigureAwait(false);
                throw new HostStartException(hostName, $"refused at the handshake: {refusal}");
            }

            connection.Send(new Welcome(ProtocolConstants.Version, hostName));
            var channel = new ProcessHostChannel(hostName, isolation, process, connection, io, events,
                loggerFactory.CreateLogger($"DriverIsolation.Host.{hostName}"), onExited);
            channel.Start(time, options);
            _ = GuardPipeAsync(pipeName, channel);

            // What the caller does with a new host happens before the host is announced.
            if (ready is not null)
            {
                await ready(channel).ConfigureAwait(false);
            }

            Log.HostStarted(_logger, hostName, process.Id, isolation.ToManifestName());
            events.Add(KernelEventKind.HostStarted, hostName, null, $"PID {process.Id}");
            return channel;
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or ProtocolException or HostStartException)
        {
            Reap(process);
            await server.DisposeAsync().ConfigureAwait(false);
            throw ex is HostStartException ? ex : new HostStartException(hostName, ex.Message, ex);
        }
    }

    private static NamedPipeServerStream NewServer(string pipeName) =>
        new(pipeName, PipeDirection.InOut, 2, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);

    /// <summary>After the handshake no one else may use the host's pipe: every further connection
    /// (another process that found the name, or the host replaying its token) is answered with
    /// Refused, logged, and dropped. If it comes from the host itself (by the socket's peer
    /// credentials), the host is breaking the protocol and is killed.</summary>
    private async Task GuardPipeAsync(string pipeName, ProcessHostChannel channel)
    {
        using var gone = new CancellationTokenSource();
        _ = channel.Exited.ContinueWith(_ => gone.Cancel(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        while (!gone.IsCancellationRequested)
        {
            NamedPipeServerStream guard;
            try
            {
                guard = NewServer(pipeName);
            }
            catch (IOException)
            {
                return; // The pipe is gone with its host.
            }

            await using (guard.ConfigureAwait(false))
            {
                try
                {
                    await guard.WaitForConnectionAsync(gone.Token).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is OperationCanceledException or IOException or ObjectDisposedException)
                {
                    return;
                }

                var peer = PeerCredentials.TryGetProcessId(guard);
                var reason = peer is { } pid
                    ? string.Create(CultureInfo.InvariantCulture, $"from PID {pid}{(pid == channel.ProcessId ? " (the host itself)" : "")}")
                    : "from an unknown process";
                Log.ConnectionRefused(_logger, channel.Name, reason);
                events.Add(KernelEventKind.ConnectionRefused, channel.Name, null, $"a second connection to the pipe, {reason}");
                try
                {
                    await using var connection = new FrameConnection(guard, untrustedPeer: true, options.MaxFrameSize);
                    connection.Send(new Refused("this pipe already has its host"));
                }
                catch (IOException)
                {
                    // It is gone already; refused either way.
                }

                if (peer == channel.ProcessId)
                {
                    channel.ReportViolation("opened a second connection to its pipe");
                }
            }
        }
    }

    /// <summary>Says what is wrong with a host's first message, or null if nothing is: it must be
    /// a Hello in the kernel's protocol version, with the one-time token, from the PID the kernel
    /// spawned, both as the host claims it and (where the OS tells) as the socket's peer.</summary>
    internal static string? CheckHello(Message? first, byte[] token, int spawnedPid, int? peerPid)
    {
        if (first is not Hello hello)
        {
            return first is null ? "closed the pipe before saying Hello" : $"sent {first.GetType().Name} before Hello";
        }

        if (hello.ProtocolVersion != ProtocolConstants.Version)
        {
            return $"protocol version {hello.ProtocolVersion}, the kernel speaks {ProtocolConstants.Version}";
        }

        if (!CryptographicOperations.FixedTimeEquals(hello.Token, token))
        {
            return "wrong token";
        }

        if (hello.ProcessId != spawnedPid)
        {
            return $"claims PID {hello.ProcessId}, the kernel spawned {spawnedPid}";
        }

        return peerPid is { } peer && peer != spawnedPid
            ? $"the pipe's peer is PID {peer} (by its socket credentials), the kernel spawned {spawnedPid}"
            : null;
    }

    private Process Spawn(string pipeName, string hostName, bool rehearse)
    {
        var hostAssembly = DriverHostExecutable.AssemblyPath(options.HostPath);
        if (!File.Exists(hostAssembly))
        {
            throw new HostStartException(hostName, $"the host executable is not at {hostAssembly}");
        }

        var start = DriverHostExecutable.StartInfo(options.HostPath,
            ["--pipe", pipeName, "--parent-pid", Environment.ProcessId.ToString(CultureInfo.InvariantCulture), "--name", hostName,
                "--dispatch", options.HostDispatch == DriverHost.HostDispatch.Pool ? "pool" : "inline",
                "--stall-ms", ((int)Math.Max(1, options.InlineStall.TotalMilliseconds)).ToString(CultureInfo.InvariantCulture),
                .. rehearse ? ["--rehearse"] : Array.Empty<string>()]);
        return Process.Start(start) ?? throw new HostStartException(hostName, "Process.Start returned nothing");
    }

    private void PumpOutput(Process process, string hostName)
    {
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { Length: > 0 } line)
            {
                Log.HostOutput(_logger, hostName, line);
            }
        };
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { Length: > 0 } line)
            {
                Log.HostOutput(_logger, hostName, line);
            }
        };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
    }

    private static void Reap(Process? process)
    {
        if (process is null)
        {
            return;
        }

        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }

        process.Dispose();
    }
}

/// <summary>A driver host could not be started or did not pass the handshake.</summary>
public sealed class HostStartException : Exception
{
    public HostStartException(string host, string reason, Exception? inner = null)
        : base($"driver host {host}: {reason}", inner)
    {
    }
}
