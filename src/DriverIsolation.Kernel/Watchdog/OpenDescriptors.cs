using System.Runtime.InteropServices;

namespace DriverIsolation.Kernel;

/// <summary>
/// How many file descriptors a process has open (Linux), for a host's handle budget. Since Linux
/// 6.2 the size of /proc/&lt;pid&gt;/fd is that number, so one <c>statx</c> tells it; before, the
/// directory's size is 0 and its entries are counted (which costs a <c>stat</c> of each: a
/// heartbeat of a host with a few hundred descriptors took about a millisecond that way).
/// </summary>
internal static partial class OpenDescriptors
{
    private const int AtCurrentDirectory = -100;
    private const uint StatxSize = 0x200;
    private const int StatxSizeOffset = 40; // struct statx: stx_size after mask, blksize, attributes, nlink, uid, gid, mode, ino
    private const int StatxLength = 256;
    private static volatile bool s_noStatx;

    /// <summary>The count; throws <see cref="IOException"/> once the process is gone.</summary>
    public static int Count(int processId) =>
        FromDirectorySize(processId) ?? Directory.EnumerateFileSystemEntries($"/proc/{processId}/fd").Count();

    /// <summary>The size of /proc/&lt;pid&gt;/fd if the kernel gives it (Linux 6.2 and later),
    /// null if not (an older kernel, or no such process).</summary>
    internal static int? FromDirectorySize(int processId)
    {
        if (s_noStatx)
        {
            return null;
        }

        Span<byte> buffer = stackalloc byte[StatxLength];
        buffer.Clear();
        try
        {
            if (Statx(AtCurrentDirectory, $"/proc/{processId}/fd", 0, StatxSize, ref MemoryMarshal.GetReference(buffer)) != 0)
            {
                return null;
            }
        }
        catch (EntryPointNotFoundException)
        {
            s_noStatx = true; // A C library without statx (glibc before 2.28): the listing, from now on.
            return null;
        }

        var returned = MemoryMarshal.Read<uint>(buffer);
        var size = MemoryMarshal.Read<ulong>(buffer[StatxSizeOffset..]);
        return (returned & StatxSize) != 0 && size is > 0 and <= int.MaxValue ? (int)size : null;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int directory, string path, int flags, uint mask, ref byte buffer);
}
