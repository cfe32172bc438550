namespace DriverIsolation;

/// <summary>A driver's entry point. The host finds the one public type implementing this in the
/// driver assembly (or the type the manifest names), creates it, and calls
/// <see cref="DriverEntry"/> once before any device is added.</summary>
public interface IDriver
{
    /// <summary>Fills in the dispatch table and <see cref="DriverObject.AddDevice"/>; a failure
    /// status fails the load.</summary>
    NtStatus DriverEntry(DriverObject driver);
}
