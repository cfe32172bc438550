using System.Reflection;
using System.Runtime.Loader;

namespace DriverIsolation.DriverHost;

/// <summary>
/// One load context per driver, so drivers cannot see each other's types or statics and can be
/// unloaded. The driver API and the logging abstractions are shared with the host (returning null
/// falls back to the default context), which is what lets the host call the driver at all.
/// </summary>
internal sealed class DriverLoadContext : AssemblyLoadContext
{
    // Made on the first dependency the driver does not share with the host: reading the driver's
    // dependency file costs about 1.2 ms, and a driver that depends only on the driver API (the
    // samples) never needs it. A restart's load is that much quicker.
    private readonly Lazy<AssemblyDependencyResolver> _resolver;

    public DriverLoadContext(string driverName, string assemblyPath)
        : base($"driver:{driverName}", isCollectible: true)
    {
        _resolver = new Lazy<AssemblyDependencyResolver>(() => new AssemblyDependencyResolver(assemblyPath), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    protected override Assembly? Load(AssemblyName assemblyName)
    {
        if (IsShared(assemblyName))
        {
            return null;
        }

        var path = _resolver.Value.ResolveAssemblyToPath(assemblyName);
        return path is null ? null : LoadFromAssemblyPath(path);
    }

    protected override IntPtr LoadUnmanagedDll(string unmanagedDllName)
    {
        var path = _resolver.Value.ResolveUnmanagedDllToPath(unmanagedDllName);
        return path is null ? IntPtr.Zero : LoadUnmanagedDllFromPath(path);
    }

    private static bool IsShared(AssemblyName name) =>
        name.Name is "DriverIsolation.Abstractions" ||
        (name.Name?.StartsWith("Microsoft.Extensions.Logging", StringComparison.Ordinal) ?? false) ||
        (name.Name?.StartsWith("Microsoft.Extensions.DependencyInjection.Abstractions", StringComparison.Ordinal) ?? false);
}
