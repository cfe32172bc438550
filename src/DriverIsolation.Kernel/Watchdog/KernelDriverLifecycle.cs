namespace DriverIsolation.Kernel;

/// <summary>Connects a driver's supervisor to the kernel that runs the driver.</summary>
internal sealed class KernelDriverLifecycle(Microkernel kernel, KernelDriver driver) : IDriverLifecycle
{
    public string Name => driver.Name;

    public bool IsRunning => driver.IsRunning;

    public Task RestartAsync(CancellationToken cancellationToken) => kernel.RestartDriverAsync(driver, cancellationToken);

    public Task<string> WaitForFailureAsync(CancellationToken cancellationToken) => driver.InstanceFailed.WaitAsync(cancellationToken);

    public void Quarantine(string reason) => kernel.QuarantineDriver(driver, reason);

    public void GiveUp(string reason) => kernel.GiveUpOnDriver(driver, reason);

    public string? QuarantineDemand => driver.QuarantineDemand;
}
