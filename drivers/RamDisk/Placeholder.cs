namespace DriverIsolation.Drivers.RamDisk; public static class Placeholder {}
