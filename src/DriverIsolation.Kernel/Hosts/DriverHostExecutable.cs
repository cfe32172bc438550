using System.Diagnostics;
using System.Runtime.InteropServices;

namespace DriverIsolation.Kernel;

/// <summary>How to start drvhost: the dotnet muxer this process runs on, and drvhost.dll (from
/// <see cref="KernelOptions.HostPath"/>, the DRVISO_DRVHOST variable, or beside the kernel).</summary>
public static class DriverHostExecutable
{
    public static string AssemblyPath(string? configured = null) =>
        configured ?? Environment.GetEnvironmentVariable("DRVISO_DRVHOST") ?? Path.Combine(AppContext.BaseDirectory, "drvhost.dll");

    /// <summary>The dotnet muxer that runs this process, so the host runs on the same runtime.</summary>
    public static string Dotnet()
    {
        var fromEnvironment = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(fromEnvironment) && File.Exists(fromEnvironment))
        {
            return fromEnvironment;
        }

        // .../dotnet/shared/Microsoft.NETCore.App/<version>/ -> .../dotnet/dotnet
        var root = Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));
        var muxer = Path.Combine(root, OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet");
        return File.Exists(muxer) ? muxer : "dotnet";
    }

    public static ProcessStartInfo StartInfo(string? configured, IEnumerable<string> arguments)
    {
        var start = new ProcessStartInfo(Dotnet())
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(AssemblyPath(configured));
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        return start;
    }
}
