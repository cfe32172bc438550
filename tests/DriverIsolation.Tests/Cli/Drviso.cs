using System.Diagnostics;

namespace DriverIsolation.Tests;

/// <summary>Runs drviso (built beside the tests) as a user would, every process reaped.</summary>
internal static class Drviso
{
    public static ProcessStartInfo StartInfo(params string[] args)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "drviso.dll"));
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        return start;
    }

    public static Task<(int ExitCode, string Output)> RunAsync(params string[] args) => RunAsync(TimeSpan.FromMinutes(2), args);

    /// <summary>Runs drviso to its end, killed (and the test failed) after <paramref name="bound"/>.</summary>
    public static async Task<(int ExitCode, string Output)> RunAsync(TimeSpan bound, params string[] args)
    {
        using var process = Process.Start(StartInfo(args))!;
        try
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(bound);
            return (process.ExitCode, await stdout + await stderr);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }

    /// <summary>Reads a long-running drviso's output up to the first line that starts with
    /// <paramref name="prefix"/> (serve's "serving: kernel PID ..."), and returns that line.</summary>
    public static async Task<string> ReadUntilAsync(Process process, string prefix)
    {
        while (await process.StandardOutput.ReadLineAsync() is { } line)
        {
            if (line.StartsWith(prefix, StringComparison.Ordinal))
            {
                return line;
            }
        }

        throw new InvalidOperationException($"drviso ended without printing \"{prefix}\"");
    }
}
