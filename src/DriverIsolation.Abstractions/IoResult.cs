namespace DriverIsolation;

/// <summary>An I/O status block: the final status of a request and its information field
/// (bytes transferred for reads, writes and control requests).</summary>
public readonly record struct IoResult(NtStatus Status, long Information)
{
    public bool IsSuccess => Status.IsSuccess();

    public static IoResult FromStatus(NtStatus status) => new(status, 0);

    public override string ToString() => $"{Status} ({Information})";
}
