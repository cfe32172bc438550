namespace DriverIsolation.Kernel;

/// <summary>Where a driver runs (DESIGN.md, "Isolation models").</summary>
public enum IsolationModel
{
    /// <summary>In the kernel process, called directly: a driver fault is a kernel fault.</summary>
    InKernel,

    /// <summary>In one host process with the other drivers of its host group.</summary>
    SharedHost,

    /// <summary>In a host process of its own (the default).</summary>
    Process,
}

public static class IsolationModels
{
    public static string ToManifestName(this IsolationModel model) => model switch
    {
        IsolationModel.InKernel => "in-kernel",
        IsolationModel.SharedHost => "shared-host",
        _ => "process",
    };

    public static bool TryParse(string? text, out IsolationModel model)
    {
        switch (text)
        {
            case "in-kernel": model = IsolationModel.InKernel; return true;
            case "shared-host": model = IsolationModel.SharedHost; return true;
            case "process": model = IsolationModel.Process; return true;
            default: model = IsolationModel.Process; return false;
        }
    }

    public static IsolationModel Parse(string text) =>
        TryParse(text, out var model)
            ? model
            : throw new ArgumentException($"unknown isolation model '{text}': expected in-kernel, shared-host or process", nameof(text));
}
