namespace DriverIsolation.Protocol; public static class Placeholder {}
