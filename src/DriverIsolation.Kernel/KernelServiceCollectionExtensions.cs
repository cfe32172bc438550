using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace DriverIsolation.Kernel;

public static class KernelServiceCollectionExtensions
{
    /// <summary>Registers the kernel as a singleton, with <see cref="KernelOptions"/>, the
    /// container's <see cref="ILoggerFactory"/> and <see cref="TimeProvider"/> (the system clock
    /// unless one is registered: tests register a FakeTimeProvider).</summary>
    public static IServiceCollection AddDriverIsolationKernel(this IServiceCollection services, Action<KernelOptions>? configure = null)
    {
        var options = new KernelOptions();
        configure?.Invoke(options);
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton(options);
        services.TryAddSingleton(sp => new Microkernel(
            sp.GetRequiredService<KernelOptions>(),
            sp.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance,
            sp.GetRequiredService<TimeProvider>()));
        return services;
    }
}
