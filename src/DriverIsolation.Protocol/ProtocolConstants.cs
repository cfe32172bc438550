namespace DriverIsolation.Protocol;

public static class ProtocolConstants
{
    /// <summary>Bumped whenever a message changes shape; the handshake refuses a mismatch.</summary>
    public const int Version = 1;

    /// <summary>Length prefix: a little-endian UInt32 with the body length.</summary>
    public const int FrameHeaderSize = 4;

    /// <summary>Default hard limit on one frame's body: 1 MiB plus room for the message around a
    /// 1 MiB buffer. Anything longer is refused before a byte of it is buffered or allocated, so a
    /// hostile peer cannot make the kernel allocate on its say-so.</summary>
    public const int DefaultMaxFrameSize = (1 << 20) + 4096;

    /// <summary>Maximum object-graph depth accepted from an untrusted peer. Messages here are
    /// two levels deep; 8 leaves room and stops stack-exhaustion payloads.</summary>
    public const int MaxObjectGraphDepth = 8;

    /// <summary>Length of the one-time authentication token.</summary>
    public const int TokenLength = 32;
}
