using Microsoft.Extensions.Logging;

namespace DriverIsolation.DriverHost;

/// <summary>The driver runtime's way back to the kernel. In a host process each call becomes a
/// frame on the pipe; in-kernel it is a direct call into the I/O manager.</summary>
public interface IKernelLink
{
    void Complete(long irpId, int deviceId, NtStatus status, long information, ReadOnlyMemory<byte> data);

    void PassDown(long irpId, int deviceId, bool wantsCompletion, long offset, int length, ReadOnlyMemory<byte> input);

    void Log(int driverId, LogLevel level, string message);

    /// <summary>Maps pages of a device's DMA window in its IOMMU domain.</summary>
    void DmaMap(int deviceId, int firstPage, int pages, DmaAccess access);

    void DmaUnmap(int deviceId, int firstPage, int pages);

    /// <summary>A register write (doorbell) to a device.</summary>
    void WriteRegister(int deviceId, int registerIndex, ulong value);

    /// <summary>The fault shim is about to inject a fault: the kernel hears of it first (in a
    /// host, the message is on the pipe before this returns).</summary>
    void FaultInjected(int driverId, int index, string fault, string detail);

    /// <summary>Sends bytes that are no valid frame (the malformed-frame fault). False where
    /// there is no pipe (in-kernel).</summary>
    bool SendMalformedFrame(ReadOnlySpan<byte> bytes);

    /// <summary>A CPU store of 8 bytes at a physical address of the kernel's memory (the
    /// wild-write fault). True where it landed: in-kernel, where the kernel's memory is the
    /// driver's memory. False in a host, which has no mapping of it.</summary>
    bool WriteKernelMemory(ulong physicalAddress, ulong value);
}
