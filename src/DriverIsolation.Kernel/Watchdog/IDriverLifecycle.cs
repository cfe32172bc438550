namespace DriverIsolation.Kernel;

/// <summary>What the supervisor needs from one driver: whether it runs, a way to start a fresh
/// instance, the moment the running instance fails, and what to do when it is given up on.</summary>
internal interface IDriverLifecycle
{
    string Name { get; }

    bool IsRunning { get; }

    /// <summary>Starts a fresh instance (host, driver, devices, open handles). Throws
    /// <see cref="DriverStartException"/> if it cannot.</summary>
    Task RestartAsync(CancellationToken cancellationToken);

    /// <summary>Completes, with the reason, when the running instance fails.</summary>
    Task<string> WaitForFailureAsync(CancellationToken cancellationToken);

    void Quarantine(string reason);

    /// <summary>Restarting is off for this driver: it stays down.</summary>
    void GiveUp(string reason);

    /// <summary>Set when the driver's failure calls for quarantine whatever the count (the
    /// manifest's policy for an IOMMU fault): the supervisor quarantines instead of restarting.</summary>
    string? QuarantineDemand => null;
}

/// <summary>A fresh instance of a driver could not be started.</summary>
internal sealed class DriverStartException(string message) : Exception(message);
