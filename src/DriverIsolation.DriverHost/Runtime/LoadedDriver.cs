namespace DriverIsolation.DriverHost;

internal sealed record LoadedDriver(int DriverId, DriverObject DriverObject, DriverLoadContext? LoadContext, FaultShim? Shim = null);
