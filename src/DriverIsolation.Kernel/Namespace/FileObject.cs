namespace DriverIsolation.Kernel;

/// <summary>An open handle to a device. Counts its outstanding IRPs (the I/O manager finds them,
/// to cancel them, as it does on Cleanup).</summary>
internal sealed class FileObject(long id, KernelDevice device, string openedAs)
{
    public long Id { get; } = id;

    public KernelDevice Device { get; } = device;

    public string OpenedAs { get; } = openedAs;

    /// <summary>IRPs submitted on the handle and not finished yet.</summary>
    public int OutstandingCount;

    public int State; // 0 open, 1 closing
}
