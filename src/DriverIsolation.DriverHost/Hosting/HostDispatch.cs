namespace DriverIsolation.DriverHost;

/// <summary>Where a driver host runs its drivers' routines.</summary>
public enum HostDispatch
{
    /// <summary>Every routine on the thread pool (a thread hop per request; the default).</summary>
    Pool,

    /// <summary>On the thread that read the request from the pipe, until a routine holds it past
    /// the stall time; then a new thread takes over reading (no thread hop; experimental, see
    /// docs/performance.md).</summary>
    Inline,
}
