namespace DriverIsolation.Cli.Nbd;

/// <summary>The numbers of the Network Block Device protocol (fixed newstyle negotiation, simple
/// replies), as the protocol document names them.</summary>
internal static class NbdProtocol
{
    public const ulong InitMagic = 0x4e42444d41474943; // "NBDMAGIC"
    public const ulong OptionMagic = 0x49484156454F5054; // "IHAVEOPT"
    public const ulong OptionReplyMagic = 0x3e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;

    // Handshake flags (server) and client flags.
    public const ushort FlagFixedNewstyle = 1 << 0;
    public const ushort FlagNoZeroes = 1 << 1;
    public const uint ClientFlagFixedNewstyle = 1 << 0;
    public const uint ClientFlagNoZeroes = 1 << 1;

    // Transmission flags.
    public const ushort FlagHasFlags = 1 << 0;
    public const ushort FlagSendFlush = 1 << 2;
    public const ushort FlagSendFua = 1 << 3;
    public const ushort FlagSendTrim = 1 << 5;
    public const ushort FlagCanMultiConn = 1 << 8;

    // Options.
    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;

    // Option replies.
    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepErrUnsupported = 0x8000_0001;
    public const uint RepErrInvalid = 0x8000_0003;
    public const uint RepErrUnknown = 0x8000_0006;

    // Info types.
    public const ushort InfoExport = 0;
    public const ushort InfoName = 1;
    public const ushort InfoDescription = 2;
    public const ushort InfoBlockSize = 3;

    // Commands.
    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisconnect = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;

    public const ushort CmdFlagFua = 1 << 0;

    // Errors (errno values, as the protocol fixes them).
    public const uint Ok = 0;
    public const uint EPerm = 1;
    public const uint EIo = 5;
    public const uint ENoMem = 12;
    public const uint EInval = 22;
    public const uint ENoSpc = 28;
    public const uint EOverflow = 75;
    public const uint ENotSup = 95;
    public const uint EShutdown = 108;

    /// <summary>What an NBD client is told for an I/O status.</summary>
    public static uint ErrorFor(NtStatus status) => status switch
    {
        NtStatus.Success => Ok,
        NtStatus.InvalidParameter or NtStatus.EndOfFile => EInval,
        NtStatus.InsufficientResources => ENoMem,
        NtStatus.InvalidDeviceRequest or NtStatus.NotSupported => ENotSup,
        NtStatus.SystemCrashed => EShutdown,
        _ => EIo,
    };
}
