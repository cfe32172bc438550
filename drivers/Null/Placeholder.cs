namespace DriverIsolation.Drivers.Null; public static class Placeholder {}
