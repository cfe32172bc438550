using System.Text.Json.Serialization;
using DriverIsolation.Kernel;

namespace DriverIsolation.Cli.Control;

/// <summary>
/// The control channel of a serving kernel: one JSON line in, one JSON line out, per connection,
/// on a current-user-only pipe named after the kernel's PID. It is for people and tools on the
/// same machine (list drivers, re-enable one, break one), never the I/O path.
/// </summary>
internal sealed record ControlRequest(
    [property: JsonPropertyName("op")] string Op,
    [property: JsonPropertyName("driver")] string? Driver = null,
    [property: JsonPropertyName("fault")] string? Fault = null,
    [property: JsonPropertyName("parameters")] IReadOnlyDictionary<string, string>? Parameters = null);

internal sealed record ControlResponse(
    [property: JsonPropertyName("ok")] bool Ok,
    [property: JsonPropertyName("error")] string? Error = null,
    [property: JsonPropertyName("drivers")] IReadOnlyList<ControlDriver>? Drivers = null,
    [property: JsonPropertyName("safe_mode")] string? SafeMode = null,
    [property: JsonPropertyName("devices")] IReadOnlyList<ControlDevice>? Devices = null,
    [property: JsonPropertyName("events")] IReadOnlyList<ControlEventCount>? Events = null,
    [property: JsonPropertyName("in_flight")] int InFlight = 0,
    [property: JsonPropertyName("iommu")] string? Iommu = null,
    [property: JsonPropertyName("at_ms")] long AtMilliseconds = 0,
    [property: JsonPropertyName("detail")] string? Detail = null);

/// <summary>A device's running totals: IRPs completed to callers, those that failed, and how
/// many took at most each of <see cref="LiveStatistics.BucketBoundsMicros"/>.</summary>
internal sealed record ControlDevice(
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("stack")] IReadOnlyList<string> Stack,
    [property: JsonPropertyName("completed")] long Completed,
    [property: JsonPropertyName("failed")] long Failed,
    [property: JsonPropertyName("latency_buckets")] IReadOnlyList<long> LatencyBuckets);

/// <summary>How many kernel events of a kind concerned a driver ("" for the kernel itself).</summary>
internal sealed record ControlEventCount(
    [property: JsonPropertyName("kind")] string Kind,
    [property: JsonPropertyName("driver")] string Driver,
    [property: JsonPropertyName("count")] long Count);

internal sealed record ControlDriver(
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("state")] string State,
    [property: JsonPropertyName("isolation")] string Isolation,
    [property: JsonPropertyName("pid")] int ProcessId,
    [property: JsonPropertyName("restarts")] int Restarts,
    [property: JsonPropertyName("failure")] string? Failure,
    [property: JsonPropertyName("transport")] string Transport = "pipe");

internal static class ControlPipe
{
    public const string Prefix = "drviso-ctl-";

    public static string NameFor(int kernelPid) => $"{Prefix}{kernelPid}";

    /// <summary>PIDs of the kernels serving on this machine, from their control pipes (on Unix a
    /// named pipe is a socket file in the temp directory).</summary>
    public static IReadOnlyList<int> Serving() => Serving(Path.GetTempPath(), LeftoverFiles.ReadUnixSockets());

    /// <summary>
    /// The PIDs of the control pipes in <paramref name="directory"/> that a process is listening
    /// on. A kernel that was killed leaves its socket file behind, and the system may since have
    /// given its PID to another process: on Linux the file counts only if the system's table of
    /// Unix sockets (<paramref name="unixSockets"/>, the text of /proc/net/unix) has a listening
    /// socket of that name, which only the kernel of that PID makes. Where
    /// there is no such table (null), a file counts if its PID's process started before the file
    /// was made (what a wall clock stepped forward can fool).
    /// </summary>
    internal static IReadOnlyList<int> Serving(string directory, string? unixSockets)
    {
        // By name: a socket's path is listed as it was bound ("/tmp//CoreFxPipe_..." if that is how
        // the temp directory was written), not as it is enumerated here.
        var listening = unixSockets is null ? null : LeftoverFiles.ListeningPaths(unixSockets).Select(Path.GetFileName).ToHashSet(StringComparer.Ordinal);
        var pids = new List<int>();
        foreach (var path in Directory.EnumerateFiles(directory, $"CoreFxPipe_{Prefix}*"))
        {
            if (int.TryParse(Path.GetFileName(path)[($"CoreFxPipe_{Prefix}".Length)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var pid)
                && (listening?.Contains(Path.GetFileName(path)) ?? IsAliveSince(pid, File.GetLastWriteTimeUtc(path))))
            {
                pids.Add(pid);
            }
        }

        pids.Sort();
        return pids;
    }

    // How far a process's start time may seem to be after its own pipe's: the system tells the
    // start in clock ticks after a boot time it gives to the second.
    private static readonly TimeSpan StartTimeSlack = TimeSpan.FromSeconds(5);

    private static bool IsAliveSince(int pid, DateTime pipeMadeUtc)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited && process.StartTime.ToUniversalTime() <= pipeMadeUtc + StartTimeSlack;
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            return false; // No such process, or it ended while being looked at.
        }
    }
}
