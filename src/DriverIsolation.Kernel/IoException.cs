namespace DriverIsolation.Kernel;

/// <summary>An operation that has no status block to return its failure in (opening a device)
/// failed with <see cref="Status"/>.</summary>
public sealed class IoException : Exception
{
    public IoException(NtStatus status, string message) : base($"{message}: {status}") => Status = status;

    public NtStatus Status { get; }
}
