using System.Globalization;

namespace DriverIsolation.Kernel;

/// <summary>
/// What a kernel (or a host) killed outright leaves behind: its physical memory's shared-memory
/// file, its rings' files, the socket files of its host and control pipes (and a host's rehearsal
/// pipe). A process that ends normally deletes its own; one that is killed cannot, and physical
/// memory under /dev/shm is RAM. Each of these names carries the PID of the process that made it.
/// A leftover is one whose PID is no process any more and that nothing uses: no process listens on
/// a socket file (per /proc/net/unix), no process has a memory file open (whoever maps one holds a
/// shared lock on it, which .NET takes on every open, so one that can be locked exclusively is
/// mapped by no one, whatever PID namespace its kernel is in). A live process's files are never
/// touched, however old.
/// </summary>
public static class LeftoverFiles
{
    // Each name is a prefix, the maker's PID, then the end of the name or '-'.
    private static readonly string[] Prefixes =
    [
        "drviso-phys-", "drviso-ring-", "drviso-chaos-",
        "CoreFxPipe_drviso-ctl-", "CoreFxPipe_drviso-bench-", "CoreFxPipe_drviso-", "CoreFxPipe_drvhost-rehearsal-",
    ];

    private static readonly Lazy<int> Once = new(() => Remove(Directories(), ReadUnixSockets(), IsProcess));

    /// <summary>Removes the leftovers in /dev/shm and the temp directory, the first time it is
    /// called in a process; how many there were. A file that cannot be deleted (another user's,
    /// gone already) is left.</summary>
    public static int RemoveOnce() => Once.Value;

    /// <summary>Removes the leftovers in <paramref name="directories"/>: files named by one of the
    /// prefixes and a PID that <paramref name="isProcess"/> says is no process, that are not a
    /// listening socket in <paramref name="unixSockets"/> (the text of /proc/net/unix; null where
    /// there is none) and, if they are not sockets, that no process has open.</summary>
    internal static int Remove(IEnumerable<string> directories, string? unixSockets, Func<int, bool> isProcess)
    {
        var listening = unixSockets is null ? [] : ListeningPaths(unixSockets);
        var alive = new Dictionary<int, bool>();
        var removed = 0;
        foreach (var directory in directories.Distinct(StringComparer.Ordinal))
        {
            List<string> files;
            try
            {
                files = [.. Directory.EnumerateFiles(directory)];
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            foreach (var path in files)
            {
                if (MakerOf(Path.GetFileName(path)) is not { } pid || listening.Contains(Path.GetFullPath(path)))
                {
                    continue;
                }

                if (!alive.TryGetValue(pid, out var live))
                {
                    alive[pid] = live = isProcess(pid);
                }

                if (!live && TryDeleteUnused(path))
                {
                    removed++;
                }
            }
        }

        return removed;
    }

    /// <summary>Deletes a socket file, or a file no process has open (locked exclusively while it
    /// is deleted, so no one opens it meanwhile); false if it is in use, another user's or gone.</summary>
    private static bool TryDeleteUnused(string path)
    {
        try
        {
            if (Path.GetFileName(path).StartsWith("CoreFxPipe_", StringComparison.Ordinal))
            {
                File.Delete(path); // A socket file: it cannot be opened as a file; listening told.
                return true;
            }

            using var locked = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.None);
            File.Delete(path);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false; // Open (and so locked) elsewhere, another user's, or gone already.
        }
    }

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

    /// <summary>The paths of the listening sockets in the text of /proc/net/unix.</summary>
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
