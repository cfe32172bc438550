namespace DriverIsolation.Protocol;

/// <summary>The peer sent something that is not a valid frame or message. On the kernel side this
/// is always the host's fault: the connection is dropped, the kernel carries on.</summary>
public sealed class ProtocolException : Exception
{
    public ProtocolException(string message) : base(message) { }

    public ProtocolException(string message, Exception inner) : base(message, inner) { }
}
