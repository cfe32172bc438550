using System.Globalization;
using System.Net.Sockets;

namespace DriverIsolation.Kernel;

/// <summary>
/// What a kernel (or a host) killed outright leaves behind: its physical memory's shared-memory
/// file, its rings' files, the socket files of its host and control pipes (and a host's rehearsal
/// pipe). A process that ends normally deletes its own; one that is killed cannot, and physical
/// memory under /dev/shm is RAM. Each of these names carries the PID of the process that made it.
/// A leftover is a file whose PID is no process, last changed over a minute ago (a kernel making
/// its files is done with that in seconds), and that nothing uses:
/// <list type="bullet">
/// <item>a memory or ring file that can be locked exclusively (a .NET process holds a shared lock
/// on every file it has open, so one mapped by any process cannot be; where this process does not
/// lock files, <c>DOTNET_SYSTEM_IO_DISABLEFILELOCKING</c>, they are all left);</item>
/// <item>a pipe's socket file that no process listens on (per /proc/net/unix) and, for a control
/// pipe, that refuses a connection (/proc/net/unix lists only this network namespace's sockets;
/// a connection reaches a kernel in another one). A host's pipe is connected or given up within
/// seconds of its making, and the file is not needed after that.</item>
/// </list>
/// A kernel in another PID namespace sharing these directories looks dead here; its files are
/// kept by those checks, not by its PID.
/// </summary>
public static class LeftoverFiles
{
    // Each name is a prefix, the maker's PID, then the end of the name or '-' (longest first: a
    // control pipe's name also starts as a host pipe's does).
    private static readonly string[] Prefixes = [.. new[]
    {
        "drviso-phys-", "drviso-ring-", "drviso-chaos-",
        "CoreFxPipe_drviso-ctl-", "CoreFxPipe_drviso-bench-", "CoreFxPipe_drviso-", "CoreFxPipe_drvhost-rehearsal-",
    }.OrderByDescending(p => p.Length)];

    private const string PipePrefix = "CoreFxPipe_";
    private const string ControlPipePrefix = "CoreFxPipe_drviso-ctl-";

    /// <summary>How long a file must have been left unchanged to be a leftover.</summary>
    public static readonly TimeSpan MinimumAge = TimeSpan.FromMinutes(1);

    private static int s_done;

    /// <summary>Removes the leftovers in /dev/shm and the temp directory, the first time it is
    /// called in a process (null after that): how many files, how many bytes. Never throws.</summary>
    public static (int Files, long Bytes)? RemoveOnce()
    {
        if (Interlocked.Exchange(ref s_done, 1) != 0)
        {
            return null;
        }

        try
        {
            return Remove(Directories(), ReadUnixSockets(), IsProcess, DateTime.UtcNow);
        }
#pragma warning disable CA1031 // Tidying up after others must never keep a kernel from starting.
        catch (Exception)
#pragma warning restore CA1031
        {
            return (0, 0);
        }
    }

    /// <summary>Removes the leftovers in <paramref name="directories"/> (see the type): files named by
    /// one of the prefixes and a PID that <paramref name="isProcess"/> says is no process, last
    /// written <see cref="MinimumAge"/> before <paramref name="nowUtc"/> or earlier, and unused;
    /// <paramref name="unixSockets"/> is the text of /proc/net/unix (null where there is none).</summary>
    internal static (int Files, long Bytes) Remove(IEnumerable<string> directories, string? unixSockets, Func<int, bool> isProcess, DateTime nowUtc)
    {
        // Compared by name: a socket's path is listed as it was bound (a temp directory written
        // with "//" or "/./" in it is not the path it is enumerated by here).
        var listening = unixSockets is null ? [] : ListeningPaths(unixSockets).Select(Path.GetFileName).ToHashSet(StringComparer.Ordinal);
        var alive = new Dictionary<int, bool>();
        var (files, bytes) = (0, 0L);
        foreach (var directory in directories.Select(d => Path.TrimEndingDirectorySeparator(Path.GetFullPath(d))).Distinct(StringComparer.Ordinal))
        {
            List<FileInfo> entries;
            try
            {
                entries = [.. new DirectoryInfo(directory).EnumerateFiles()];
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            foreach (var entry in entries)
            {
                if (MakerOf(entry.Name) is not { } pid || listening.Contains(entry.Name))
                {
                    continue;
                }

                if (!alive.TryGetValue(pid, out var live))
                {
                    alive[pid] = live = isProcess(pid);
                }

                if (!live && TryDeleteUnused(entry, nowUtc) is { } deleted)
                {
                    files++;
                    bytes += deleted;
                }
            }
        }

        return (files, bytes);
    }

    /// <summary>Deletes a leftover that nothing uses; its size, or null if it is kept (in use, too
    /// recent, not a file of the kind its name says, another user's, gone already).</summary>
    private static long? TryDeleteUnused(FileInfo entry, DateTime nowUtc)
    {
        try
        {
            entry.Refresh();
            if (!entry.Exists || entry.LinkTarget is not null || nowUtc - entry.LastWriteTimeUtc < MinimumAge)
            {
                return null;
            }

            if (entry.Name.StartsWith(PipePrefix, StringComparison.Ordinal))
            {
                if (entry.Name.StartsWith(ControlPipePrefix, StringComparison.Ordinal) && Answers(entry.FullName))
                {
                    return null;
                }

                entry.Delete(); // Unlinking opens nothing: safe whatever the file is.
                return 0;
            }

            // Opened only if it is a regular file with something in it: a FIFO (or a socket) of
            // that name is empty, and opening a FIFO would wait for a writer.
            var length = entry.Length;
            if (length == 0 || FileLockingDisabled)
            {
                return null;
            }

            using var locked = new FileStream(entry.FullName, FileMode.Open, FileAccess.Read, FileShare.None);
            entry.Delete();
            return length;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null; // Open (and so locked) elsewhere, another user's, or gone already.
        }
    }

    /// <summary>Whether something accepts a connection on the socket at <paramref name="path"/> (a
    /// full backlog counts as yes). A kernel's control server answers a stranger with an error
    /// and goes on.</summary>
    private static bool Answers(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException ex)
        {
            return ex.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress or SocketError.TryAgain;
        }
    }

    private static bool FileLockingDisabled =>
        (AppContext.TryGetSwitch("System.IO.DisableFileLocking", out var disabled) && disabled)
        || Environment.GetEnvironmentVariable("DOTNET_SYSTEM_IO_DISABLEFILELOCKING") is "1" or "true";

    /// <summary>The PID a leftover's name carries; null for a name that is not one of ours.</summary>
    internal static int? MakerOf(string name)
    {
        foreach (var prefix in Prefixes)
        {
            if (!name.StartsWith(prefix, StringComparison.Ordinal))
            {
                continue;
            }

            var rest = name.AsSpan(prefix.Length);
            var digits = rest.IndexOf('-') is var dash and >= 0 ? rest[..dash] : rest;
            return int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0 ? pid : null;
        }

        return null;
    }

    // /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path", one socket a line; a
    // listening socket has __SO_ACCEPTCON (0x10000) in its flags. The path, last, may hold spaces.
    private const int AcceptingConnections = 0x10000;

    /// <summary>The paths of the listening sockets in the text of /proc/net/unix, as they were
    /// bound.</summary>
    public static HashSet<string> ListeningPaths(string unixSockets)
    {
        ArgumentNullException.ThrowIfNull(unixSockets);
        var paths = new HashSet<string>(StringComparer.Ordinal);
        foreach (var line in unixSockets.Split('\n').Skip(1))
        {
            var fields = line.Split(' ', 8, StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 8
                && int.TryParse(fields[3], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var flags)
                && (flags & AcceptingConnections) != 0
                && fields[7].StartsWith('/'))
            {
                paths.Add(fields[7]);
            }
        }

        return paths;
    }

    /// <summary>The text of /proc/net/unix; null where there is none (not Linux).</summary>
    public static string? ReadUnixSockets()
    {
        try
        {
            return File.ReadAllText("/proc/net/unix");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static IEnumerable<string> Directories()
    {
        if (Directory.Exists("/dev/shm"))
        {
            yield return "/dev/shm";
        }

        yield return Path.GetTempPath();
    }

    internal static bool IsProcess(int pid)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return true;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (Exception ex) when (ex is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            return true; // Cannot tell: leave its files.
        }
    }
}
