namespace DriverIsolation.Hardware;

/// <summary>
/// The hardware behind a device object, as its driver programs it (modelled on WDF's DMA enabler
/// and common buffer, and the Linux DMA API): DMA buffers in the device's window of physical
/// memory, mapped for the device through the IOMMU, register writes (doorbells), and interrupts.
/// A buffer's <see cref="DmaBuffer.Memory"/> is the same memory the device reads and writes: no
/// copy in between. <see cref="DeviceObject.Hardware"/> is null for a device with no hardware.
/// </summary>
public interface IDeviceHardware
{
    /// <summary>The kind of device: "block" or "nic".</summary>
    string Kind { get; }

    /// <summary>The device's requester ID (bus:device.function): who its DMA comes from.</summary>
    string RequesterId { get; }

    /// <summary>What the device reports about itself (e.g. "capacityBytes", "mac").</summary>
    IReadOnlyDictionary<string, string> Properties { get; }

    /// <summary>Bytes of DMA memory this device's driver may use (its window).</summary>
    int WindowBytes { get; }

    /// <summary>A buffer the device may read and write for as long as the driver lives (queues,
    /// rings): allocated and mapped in one step.</summary>
    DmaBuffer AllocateCommonBuffer(int length);

    /// <summary>A buffer for streaming DMA: the device cannot reach it until it is mapped.</summary>
    DmaBuffer AllocateBuffer(int length);

    /// <summary>Maps a buffer for the device with the given access and returns the address the
    /// device must be given (with the IOMMU off, a physical address).</summary>
    ulong Map(DmaBuffer buffer, DmaAccess access);

    /// <summary>Takes the device's access away again.</summary>
    void Unmap(DmaBuffer buffer);

    /// <summary>Unmaps the buffer if needed and gives its pages back.</summary>
    void Free(DmaBuffer buffer);

    /// <summary>Writes a device register (a doorbell, a queue base address, ...).</summary>
    void WriteRegister(int registerIndex, ulong value);

    /// <summary>The interrupt service routine: called with the vector each time the device
    /// interrupts, one call at a time.</summary>
    void ConnectInterrupt(Action<int> serviceRoutine);
}

/// <summary>A run of pages in a device's DMA window.</summary>
public sealed class DmaBuffer
{
    internal DmaBuffer(Memory<byte> memory, int windowOffset, int pages, ulong deviceBase)
    {
        Memory = memory;
        WindowOffset = windowOffset;
        Pages = pages;
        DeviceBase = deviceBase;
    }

    /// <summary>The buffer's bytes, shared with the device (zero copy).</summary>
    public Memory<byte> Memory { get; }

    public int Length => Memory.Length;

    /// <summary>Where the buffer starts in the device's window (page-aligned).</summary>
    public int WindowOffset { get; }

    public int Pages { get; }

    /// <summary>The device address of the buffer while it is mapped.</summary>
    public ulong DeviceAddress => IsMapped ? DeviceBase + (ulong)WindowOffset : throw new InvalidOperationException("the buffer is not mapped for the device");

    public bool IsMapped { get; internal set; }

    public bool IsFreed { get; internal set; }

    internal ulong DeviceBase { get; }

    /// <summary>For the runtime that implements <see cref="IDeviceHardware"/>.</summary>
    public static DmaBuffer Create(Memory<byte> memory, int windowOffset, int pages, ulong deviceBase) => new(memory, windowOffset, pages, deviceBase);

    /// <summary>For the runtime: records a map or unmap.</summary>
    public void SetMapped(bool mapped) => IsMapped = mapped;

    /// <summary>For the runtime: records a free.</summary>
    public void SetFreed() => IsFreed = true;
}
