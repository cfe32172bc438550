namespace DriverIsolation.Drivers.Echo; public static class Placeholder {}
