using System.Text;
using System.Text.RegularExpressions;

namespace DriverIsolation.Tests;

/// <summary>
/// What a tutorial asks the student to do, read from its markdown, in order:
/// <list type="bullet">
/// <item>a block fenced <c>```sh</c> holds commands the student types (<c>```sh no-test</c>: shown,
/// never run by the tests, e.g. a benchmark that takes minutes);</item>
/// <item>a block right after <c>&lt;!-- write: path --&gt;</c> is a file the student creates with
/// that content (the test writes it where a <c>cat &gt; path</c> would);</item>
/// <item>a block right after <c>&lt;!-- shows: path --&gt;</c> quotes a file of the repository (the
/// test checks the quote is still the file).</item>
/// </list>
/// Blocks fenced <c>```text</c> (output) and any other block are the reader's only.
/// </summary>
internal sealed partial class TutorialDocument
{
    public const string NoTest = "no-test";

    private TutorialDocument(string name, IReadOnlyList<TutorialStep> steps)
    {
        Name = name;
        Steps = steps;
    }

    public string Name { get; }

    public IReadOnlyList<TutorialStep> Steps { get; }

    public IEnumerable<TutorialStep> Quotes => Steps.Where(s => s.Kind == TutorialStepKind.Shows);

    public static TutorialDocument Parse(string name, string markdown)
    {
        ArgumentNullException.ThrowIfNull(markdown);
        var lines = markdown.ReplaceLineEndings("\n").Split('\n');
        var steps = new List<TutorialStep>();
        string? pending = null;
        TutorialStepKind pendingKind = default;
        for (var i = 0; i < lines.Length; i++)
        {
            if (Marker().Match(lines[i]) is { Success: true } marker)
            {
                pendingKind = marker.Groups["kind"].Value == "write" ? TutorialStepKind.Write : TutorialStepKind.Shows;
                pending = CheckPath(name, i + 1, marker.Groups["path"].Value);
                continue;
            }

            if (!lines[i].StartsWith("```", StringComparison.Ordinal))
            {
                if (lines[i].Trim().Length > 0 && pending is not null)
                {
                    throw new FormatException($"{name}:{i + 1}: <!-- {pendingKind.ToString().ToLowerInvariant()}: {pending} --> must be followed by a fenced block");
                }

                continue;
            }

            var info = lines[i][3..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var start = i + 1;
            var body = new StringBuilder();
            for (i++; i < lines.Length && lines[i] != "```"; i++)
            {
                body.Append(lines[i]).Append('\n');
            }

            if (i == lines.Length)
            {
                throw new FormatException($"{name}:{start}: a fenced block that never closes");
            }

            if (pending is not null)
            {
                steps.Add(new TutorialStep(pendingKind, start, body.ToString(), pending));
                pending = null;
            }
            else if (info is ["sh", ..] && !info.Contains(NoTest))
            {
                steps.Add(new TutorialStep(TutorialStepKind.Commands, start, body.ToString(), null));
            }
        }

        return new TutorialDocument(name, steps);
    }

    /// <summary>The commands and the files written, in order, as one bash script; the caller
    /// defines <c>drviso</c> before it.</summary>
    public string ToScript()
    {
        var script = new StringBuilder();
        foreach (var step in Steps)
        {
            switch (step.Kind)
            {
                case TutorialStepKind.Commands:
                    script.Append($"echo '### {Name}:{step.Line}'\n").Append(step.Body);
                    break;
                case TutorialStepKind.Write:
                    var directory = Path.GetDirectoryName(step.Path);
                    script.Append($"echo '### {Name}:{step.Line}: writing {step.Path}'\n");
                    if (!string.IsNullOrEmpty(directory))
                    {
                        script.Append($"mkdir -p '{directory}'\n");
                    }

                    script.Append($"cat > '{step.Path}' <<'TUTORIAL_EOF'\n").Append(step.Body).Append("TUTORIAL_EOF\n");
                    break;
                case TutorialStepKind.Shows:
                    break;
            }
        }

        return script.ToString();
    }

    /// <summary>A path the test may write or read: relative, inside the working directory, and
    /// plain enough to quote in bash without escaping.</summary>
    private static string CheckPath(string name, int line, string path)
    {
        if (!SafePath().IsMatch(path) || path.Split('/').Any(p => p is "." or ".."))
        {
            throw new FormatException($"{name}:{line}: \"{path}\" must be a relative path of letters, digits, '.', '_', '-' and '/'");
        }

        return path;
    }

    [GeneratedRegex(@"^<!-- (?<kind>write|shows): (?<path>\S+) -->$")]
    private static partial Regex Marker();

    [GeneratedRegex(@"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]
    private static partial Regex SafePath();
}

internal enum TutorialStepKind
{
    Commands,
    Write,
    Shows,
}

/// <summary>One block of a tutorial: its kind, the line its fence opens on, its body, and the
/// file it writes or quotes.</summary>
internal sealed record TutorialStep(TutorialStepKind Kind, int Line, string Body, string? Path);
