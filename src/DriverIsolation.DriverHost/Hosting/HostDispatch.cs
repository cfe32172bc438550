namespace DriverIsolation.DriverHost;

/// <summary>Where a driver host runs its drivers' routines.</summary>
public enum HostDispatch
{
    /// <summary>On the thread that read the request from the pipe, until a routine holds it past
    /// the stall time; then a new thread takes over reading (the default: no thread hop).</summary>
    Inline,

    /// <summary>Every routine on the thread pool (a thread hop per request).</summary>
    Pool,
}
