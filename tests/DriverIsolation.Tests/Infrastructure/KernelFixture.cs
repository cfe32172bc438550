using DriverIsolation.Kernel;
using Microsoft.Extensions.Time.Testing;

namespace DriverIsolation.Tests;

/// <summary>
/// One booted kernel per test class: the four sample drivers plus the misbehaving test drivers,
/// all in one isolation model. Time is a <see cref="FakeTimeProvider"/>: deadlines fire only when
/// a test advances it. Disposal stops (and if need be kills) every host.
/// </summary>
public abstract class KernelFixture : IAsyncLifetime
{
    protected KernelFixture(IsolationModel isolation) => Isolation = isolation;

    public IsolationModel Isolation { get; }

    public FakeTimeProvider Time { get; } = new();

    public Microkernel Kernel { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        // No heartbeats: advancing the fake clock 30 s at once would make every host look hung.
        Kernel = new Microkernel(new KernelOptions { HeartbeatPeriod = null }, timeProvider: Time);
        IEnumerable<DriverManifest> manifests = [.. TestManifests.Samples(), TestManifests.Test("DoubleComplete"), TestManifests.Test("Overstate"), TestManifests.Test("Forger")];
        await Kernel.StartAsync(manifests, Isolation).Bounded();
        var failed = Kernel.GetDrivers().Where(d => d.State != DriverState.Running).ToList();
        if (failed.Count > 0)
        {
            throw new InvalidOperationException($"drivers failed to boot: {string.Join("; ", failed.Select(d => $"{d.Name}: {d.Failure}"))}");
        }
    }

    public async Task DisposeAsync() => await Kernel.DisposeAsync();
}

public sealed class InKernelFixture() : KernelFixture(IsolationModel.InKernel);

public sealed class SharedHostFixture() : KernelFixture(IsolationModel.SharedHost);

public sealed class ProcessFixture() : KernelFixture(IsolationModel.Process);
