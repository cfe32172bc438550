using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>One instance of every message kind, with every field set to something non-default.</summary>
internal static class AllMessages
{
    public static IReadOnlyList<Message> Samples() =>
    [
        new Hello(ProtocolConstants.Version, [1, 2, 3, 4], 4242),
        new Welcome(ProtocolConstants.Version, "RamDisk"),
        new Refused("wrong token"),
        new LoadDriver(7, "RamDisk", "/opt/drivers/RamDisk.dll", "Some.Type", new Dictionary<string, string> { ["a"] = "1", ["b"] = "two" },
            [new FaultSpec(2, "slow-completion", "probability", 0.25, true, 99, new Dictionary<string, string> { ["delayMs"] = "20" })], true),
        new DriverLoaded(7, NtStatus.ObjectNameNotFound, "missing"),
        new AddDevice(7, 11, @"\Device\RamDisk0", DeviceType.Disk, true, new Dictionary<string, string> { ["sizeBytes"] = "1048576" },
            new HardwareBinding("block", "00:01.0", new Dictionary<string, string> { ["capacityBytes"] = "16777216" }, "/dev/shm/phys", 0x100000, 0x40000, 0x1_0000_0000)),
        new DeviceAdded(11, NtStatus.Success, null),
        new Dispatch(123456789012, 11, MajorFunction.DeviceControl, 3, 99, 4096, 512, 0x70000, new byte[] { 9, 8, 7 }, 16, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        new Complete(123456789012, 11, NtStatus.BufferTooSmall, 16, new byte[] { 1, 2 }),
        new PassDown(42, 11, true, 8192, 1024, new byte[] { 5, 5, 5 }),
        new LowerCompleted(42, 10, NtStatus.Success, 3, new byte[] { 6, 6, 6 }, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        new Cancel(42, 10),
        new Ping(long.MaxValue),
        new Pong(17, 123_456_789, 987_654_321),
        new Log(7, 4, "driver said something"),
        new Shutdown("kernel shutdown"),
        new DmaMap(11, 3, 2, DmaAccess.Write),
        new DmaUnmap(11, 3, 2),
        new RegisterWrite(11, 4, ulong.MaxValue),
        new Interrupt(11, 1),
        new FaultInjected(7, 2, "hang", "hang in RamDisk on Read IRP 5 (request 4 since load)"),
        new UseRing("/dev/shm/drviso-ring-1-ab", 0, 4194560, 4194304, 100),
        new RingReady(4194304),
        new RingDoorbell(0),
        new PrepareDriver("VBlock", "/opt/drivers/VBlock.dll", "DriverIsolation.Drivers.VBlock.VBlockDriver"),
        new ArmFault(7, new FaultSpec(1000, "wild-dma-kernel", "requests", 0, false, 55, new Dictionary<string, string> { ["address"] = "0x1100" })),
        new HostSpan(42, 10, "XorFilter: Read", "00f067aa0ba902b7", 1000, 1100, 1900, 2000, "passed down"),
    ];
}
