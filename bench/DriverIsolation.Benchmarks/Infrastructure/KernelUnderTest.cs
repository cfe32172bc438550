using DriverIsolation.Kernel;

namespace DriverIsolation.Benchmarks.Infrastructure;

/// <summary>A kernel booted with one sample driver and one handle open on its device. Disposing
/// closes the handle, stops the kernel, and kills whatever host or warm-pool process is still
/// alive after that.</summary>
internal sealed class KernelUnderTest : IAsyncDisposable
{
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(60);

    private KernelUnderTest(Microkernel kernel, DeviceHandle device)
    {
        Kernel = kernel;
        Device = device;
    }

    public Microkernel Kernel { get; }

    public DeviceHandle Device { get; }

    /// <summary>A sample driver's manifest, copied to manifests/ by the driver's project.</summary>
    public static DriverManifest Manifest(string driver) =>
        ManifestLoader.LoadFile(Path.Combine(AppContext.BaseDirectory, "manifests", $"{driver}.json"));

    public static async Task<KernelUnderTest> StartAsync(KernelOptions options, DriverManifest manifest, IsolationModel? isolation, string devicePath)
    {
        var kernel = new Microkernel(options);
        try
        {
            await kernel.StartAsync([manifest], isolation).WaitAsync(Bounded).ConfigureAwait(false);
            var device = await kernel.OpenAsync(devicePath).WaitAsync(Bounded).ConfigureAwait(false);
            return new KernelUnderTest(kernel, device);
        }
        catch
        {
            await StopAsync(kernel).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The transport the driver's host actually uses (the ring is offered, not forced).</summary>
    public Transport TransportOf(string driver) =>
        Kernel.GetDrivers().Single(d => d.Name.Equals(driver, StringComparison.OrdinalIgnoreCase)).Transport;

    public async ValueTask DisposeAsync()
    {
        try
        {
            await Device.DisposeAsync().AsTask().WaitAsync(Bounded).ConfigureAwait(false);
        }
        finally
        {
            await StopAsync(Kernel).ConfigureAwait(false);
        }
    }

    private static async Task StopAsync(Microkernel kernel)
    {
        var hosts = HostProcessIds(kernel);
        try
        {
            await kernel.DisposeAsync().AsTask().WaitAsync(Bounded).ConfigureAwait(false);
        }
        finally
        {
            // Hosts restarted or pooled since are found again; the first list covers a kernel
            // whose shutdown did not finish.
            ProcessTree.KillDriverHosts([.. hosts, .. HostProcessIds(kernel)]);
        }
    }

    private static List<int> HostProcessIds(Microkernel kernel)
    {
        try
        {
            return [.. kernel.GetDrivers().Select(d => d.ProcessId), .. kernel.WarmPoolProcessIds];
        }
        catch (ObjectDisposedException)
        {
            return [];
        }
    }
}
