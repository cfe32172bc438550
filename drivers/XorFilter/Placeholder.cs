namespace DriverIsolation.Drivers.XorFilter; public static class Placeholder {}
