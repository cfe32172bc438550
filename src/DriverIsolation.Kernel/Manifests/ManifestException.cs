namespace DriverIsolation.Kernel;

/// <summary>A driver manifest is not valid. The message names the manifest, the field (as a JSON
/// path) and what was expected; nothing is loaded from a manifest that fails.</summary>
public sealed class ManifestException : Exception
{
    public ManifestException(string source, string field, string problem)
        : base($"{source}: {field}: {problem}")
    {
        Source = source;
        Field = field;
        Problem = problem;
    }

    public new string Source { get; }

    public string Field { get; }

    public string Problem { get; }
}
