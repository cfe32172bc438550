using System.Diagnostics;
using System.Globalization;

namespace DriverIsolation.Tests;

/// <summary>
/// A fresh directory that looks like the repository to a tutorial's commands, so that they run
/// as written (<c>scenarios/quick.json</c>, <c>drivers/VBlock/driver.json</c>) while what they
/// create stays out of the repository. The repository's own top-level folders and files are
/// symbolic links (only those: a trace or a report a student left at the root is not linked, so
/// the tutorial cannot write through it); <c>drivers/</c> and <c>src/</c> are directories of
/// links, without the folders the tutorial writes into (a student's own <c>drivers/Hello</c> is
/// never touched), and with the driver API project copied, so that building a new driver builds
/// the copy and leaves the repository's obj/ and bin/ alone. Scripts run under <c>setsid</c>:
/// the script, its background jobs and their children share one process group, killed as a whole
/// when the script ends or times out, so nothing outlives the test.
/// </summary>
internal sealed class TutorialSandbox : IDisposable
{
    private const string DriverApi = "DriverIsolation.Abstractions";

    /// <summary>The repository's layout (README.md): what a tutorial may refer to. Anything else
    /// at the root is someone's output.</summary>
    private static readonly string[] Layout =
    [
        ".ci", "bench", "docs", "scenarios", "scripts", "tests", "tools",
        ".editorconfig", ".gitignore", "Directory.Build.props", "Directory.Packages.props", "global.json", "DriverIsolation.sln", "README.md",
    ];

    private readonly List<string> _links = [];

    /// <param name="written">The files the tutorial writes (relative paths): no folder on their
    /// way is a link into the repository.</param>
    public TutorialSandbox(IEnumerable<string> written)
    {
        var reserved = written.ToList();
        Root = Directory.CreateTempSubdirectory("drviso-tut-").FullName;
        foreach (var name in Layout.Where(n => Path.Exists(Path.Combine(RepoRoot, n)) && !IsOnTheWay(n, reserved)))
        {
            Link(Path.Combine(RepoRoot, name), Path.Combine(Root, name));
        }

        foreach (var folder in new[] { "drivers", "src" })
        {
            Directory.CreateDirectory(Path.Combine(Root, folder));
            foreach (var entry in Directory.EnumerateDirectories(Path.Combine(RepoRoot, folder)))
            {
                var relative = $"{folder}/{Path.GetFileName(entry)}";
                if (relative == $"src/{DriverApi}")
                {
                    CopySources(entry, Path.Combine(Root, relative));
                }
                else if (!IsOnTheWay(relative, reserved))
                {
                    Link(entry, Path.Combine(Root, relative));
                }
            }
        }

        // Named pipes live in TMPDIR: a private one means `drviso drivers` finds this sandbox's
        // kernel and no other (the machine may be serving others, from other test runs).
        TempDirectory = Directory.CreateDirectory(Path.Combine(Root, ".tmp")).FullName;
    }

    /// <summary>The repository: the folder above the tests that holds DriverIsolation.sln.</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    public string Root { get; }

    public string TempDirectory { get; }

    public string PathOf(string relative) => Path.Combine(Root, relative);

    /// <summary>Runs a bash script (<c>set -euo pipefail</c>, <c>drviso</c> defined) in the
    /// sandbox; returns its exit code (null: timed out) and its output, stderr merged.</summary>
    public async Task<(int? ExitCode, string Output)> RunAsync(string body, TimeSpan timeout)
    {
        var script = Path.Combine(TempDirectory, "tutorial.sh");
        var groupFile = Path.Combine(TempDirectory, "tutorial.pgid");
        await File.WriteAllTextAsync(script, $$"""
            set -euo pipefail
            exec 2>&1
            echo "$$" > '{{groupFile}}'
            drviso() { "$DRVISO_DOTNET" "$DRVISO_DLL" "$@"; }

            """ + body);

        var start = new ProcessStartInfo("setsid")
        {
            WorkingDirectory = Root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "--wait", "bash", script })
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["DRVISO_DOTNET"] = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet";
        start.Environment["DRVISO_DLL"] = Path.Combine(AppContext.BaseDirectory, "drviso.dll");
        start.Environment["TMPDIR"] = TempDirectory;
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";

        // A tutorial that builds a driver must not leave build servers behind (nor start a
        // compiler server that another build on the machine would then share with this test).
        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        start.Environment["UseSharedCompilation"] = "false";

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        int? exitCode = null;
        try
        {
            await process.WaitForExitAsync().WaitAsync(timeout);
            exitCode = process.ExitCode;
        }
        catch (TimeoutException)
        {
            // Reported as a null exit code, with whatever the script printed.
        }
        finally
        {
            KillGroup(groupFile);
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }

        return (exitCode, await stdout.Bounded() + await stderr.Bounded());
    }

    public void Dispose()
    {
        KillGroup(Path.Combine(TempDirectory, "tutorial.pgid"));

        // The links go first, one by one, so that nothing can follow them into the repository.
        foreach (var link in _links)
        {
            File.Delete(link);
        }

        Directory.Delete(Root, recursive: true);
    }

    private static bool IsOnTheWay(string relative, List<string> written) =>
        written.Any(w => w == relative || w.StartsWith(relative + "/", StringComparison.Ordinal));

    private void Link(string target, string link)
    {
        File.CreateSymbolicLink(link, target);
        _links.Add(link);
    }

    /// <summary>SIGKILL to the script's process group: the script, its background jobs, the
    /// kernels they started and their driver hosts. The group is gone once all of them are.</summary>
    private static void KillGroup(string groupFile)
    {
        if (!File.Exists(groupFile)
            || !int.TryParse(File.ReadAllText(groupFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var group)
            || group <= 1)
        {
            return;
        }

        using var kill = Process.Start(new ProcessStartInfo("kill", ["-KILL", "--", $"-{group}"])
        {
            RedirectStandardError = true,
            UseShellExecute = false,
        })!;
        kill.StandardError.ReadToEnd();
        kill.WaitForExit();
    }

    private static void CopySources(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        }

        foreach (var directory in Directory.EnumerateDirectories(from))
        {
            if (Path.GetFileName(directory) is not ("bin" or "obj"))
            {
                CopySources(directory, Path.Combine(to, Path.GetFileName(directory)));
            }
        }
    }

    private static string FindRepoRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "DriverIsolation.sln")))
            {
                return directory.FullName;
            }
        }

        throw new InvalidOperationException($"no DriverIsolation.sln above {AppContext.BaseDirectory}");
    }
}
