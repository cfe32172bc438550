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
}
