using System.Diagnostics;

namespace DriverIsolation.Tests;

/// <summary>
/// The storage clients the NBD tests drive: installed on first use by
/// <c>scripts/install-test-tools.sh</c> (apt-get, as root), so the README's test command needs no
/// set-up of its own; without root it fails with the packages to install.
/// </summary>
internal static class NbdTools
{
    private static readonly Lazy<Task> Installed = new(InstallAsync);

    public static Task EnsureAsync() => Installed.Value.WaitAsync(TimeSpan.FromMinutes(5));

    private static async Task InstallAsync()
    {
        var script = FindRepositoryFile("scripts/install-test-tools.sh");
        var (exitCode, output) = await RunAsync("bash", [script], TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        if (exitCode != 0)
        {
            throw new InvalidOperationException($"the NBD clients are missing and could not be installed: {output}");
        }
    }

    /// <summary>Runs a tool to its end (killed after <paramref name="timeout"/>); its exit code
    /// and its stdout followed by its stderr.</summary>
    public static async Task<(int ExitCode, string Output)> RunAsync(string program, IEnumerable<string> args, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start)!;
        try
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync().WaitAsync(timeout).ConfigureAwait(false);
            return (process.ExitCode, await stdout.ConfigureAwait(false) + await stderr.ConfigureAwait(false));
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }

    private static string FindRepositoryFile(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new FileNotFoundException($"{relative} not found above {AppContext.BaseDirectory}");
    }
}
