namespace DriverIsolation.Kernel; public static class Placeholder {}
