using System.IO.Pipes;
using DriverIsolation.Kernel;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>Who may be a driver host: the handshake's rules, and the OS's word on the pipe's peer.</summary>
public sealed class HandshakeTests
{
    private static readonly byte[] Token = [1, 2, 3, 4, 5, 6, 7, 8];

    [Fact]
    public void CheckHello_TheSpawnedHostWithItsToken_IsAccepted()
    {
        Assert.Null(HostLauncher.CheckHello(new Hello(ProtocolConstants.Version, Token, 42), Token, 42, 42));
        Assert.Null(HostLauncher.CheckHello(new Hello(ProtocolConstants.Version, Token, 42), Token, 42, peerPid: null));
    }

    public static TheoryData<Message?, int?, string> Refusals() => new()
    {
        { null, 42, "closed the pipe before saying Hello" },
        { new Ping(1), 42, "sent Ping before Hello" },
        { new Hello(ProtocolConstants.Version + 1, Token, 42), 42, $"protocol version {ProtocolConstants.Version + 1}, the kernel speaks {ProtocolConstants.Version}" },
        { new Hello(ProtocolConstants.Version, [1, 2, 3, 4, 5, 6, 7, 9], 42), 42, "wrong token" },
        { new Hello(ProtocolConstants.Version, [], 42), 42, "wrong token" },
        { new Hello(ProtocolConstants.Version, Token, 41), 42, "claims PID 41, the kernel spawned 42" },
        { new Hello(ProtocolConstants.Version, Token, 42), 4242, "the pipe's peer is PID 4242 (by its socket credentials), the kernel spawned 42" },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void CheckHello_AnythingElse_IsRefusedWithTheReason(Message? first, int? peerPid, string reason)
    {
        Assert.Equal(reason, HostLauncher.CheckHello(first, Token, 42, peerPid));
    }

    [Fact]
    public async Task PeerCredentials_OnLinux_NameTheConnectingProcess()
    {
        var name = $"drviso-test-{Guid.NewGuid():N}";
        await using var server = new NamedPipeServerStream(name, PipeDirection.InOut, 1, PipeTransmissionMode.Byte, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        await using var client = new NamedPipeClientStream(".", name, PipeDirection.InOut, PipeOptions.Asynchronous | PipeOptions.CurrentUserOnly);
        await Task.WhenAll(server.WaitForConnectionAsync(), client.ConnectAsync()).Bounded();

        var pid = PeerCredentials.TryGetProcessId(server);

        Assert.Equal(OperatingSystem.IsLinux() ? Environment.ProcessId : null, pid);
    }
}
