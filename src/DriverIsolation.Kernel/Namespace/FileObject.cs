using System.Collections.Concurrent;

namespace DriverIsolation.Kernel;

/// <summary>An open handle to a device. Remembers its outstanding IRPs so that closing the handle
/// can cancel them, as the I/O manager does on Cleanup.</summary>
internal sealed class FileObject(long id, KernelDevice device, string openedAs)
{
    public long Id { get; } = id;

    public KernelDevice Device { get; } = device;

    public string OpenedAs { get; } = openedAs;

    public ConcurrentDictionary<long, KernelIrp> Outstanding { get; } = new();

    public int State; // 0 open, 1 closing
}
