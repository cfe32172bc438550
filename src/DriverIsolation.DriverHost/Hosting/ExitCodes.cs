namespace DriverIsolation.DriverHost;

/// <summary>drvhost's exit codes; the kernel reports them when a host ends.</summary>
public static class ExitCodes
{
    public const int Shutdown = 0;
    public const int Usage = 2;
    public const int KernelGone = 3;
    public const int Refused = 4;
    public const int ProtocolError = 5;
    public const int ConnectFailed = 6;

    /// <summary>What a host killed with SIGKILL exits with (128 + 9).</summary>
    public const int Killed = 137;

    public static string Describe(int code) => code switch
    {
        Shutdown => "shut down when asked",
        Usage => "bad command line",
        KernelGone => "lost its kernel",
        Refused => "refused at the handshake",
        ProtocolError => "protocol error",
        ConnectFailed => "could not connect to the kernel",
        134 => "aborted (unhandled exception or fail-fast)",
        Killed => "killed (SIGKILL)",
        139 => "segmentation fault",
        _ when code > 128 => $"terminated by signal {code - 128}",
        _ => $"exit code {code}",
    };
}
