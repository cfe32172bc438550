using DriverIsolation.Hardware;
using DriverIsolation.Protocol;

namespace DriverIsolation.DriverHost;

/// <summary>
/// A device's hardware as the driver runtime presents it: the device's DMA window mapped from the
/// shared physical-memory file (only that window), a page allocator over it, and maps, unmaps and
/// register writes sent to the kernel, which owns the IOMMU and the device. Messages to the kernel
/// are ordered, so a map always takes effect before the doorbell that follows it.
/// </summary>
internal sealed class HostDeviceHardware : IDeviceHardware, IDisposable
{
    private const int PageSize = 4096;

    private readonly int _deviceId;
    private readonly IKernelLink _link;
    private readonly MappedRegion _window;
    private readonly bool[] _used;
    private readonly ulong _deviceAddress;
    private readonly Lock _gate = new();
    private readonly Lock _interruptGate = new();
    private Action<int>? _serviceRoutine;

    public HostDeviceHardware(int deviceId, HardwareBinding binding, IKernelLink link)
    {
        _deviceId = deviceId;
        _link = link;
        Kind = binding.Kind;
        RequesterId = binding.RequesterId;
        Properties = binding.Properties;
        WindowBytes = binding.WindowBytes;
        _deviceAddress = binding.DeviceAddress;
        _used = new bool[binding.WindowBytes / PageSize];
        _window = MappedRegion.Open(binding.MemoryPath, binding.PhysicalAddress, binding.WindowBytes);
    }

    public string Kind { get; }

    public string RequesterId { get; }

    public IReadOnlyDictionary<string, string> Properties { get; }

    public int WindowBytes { get; }

    public DmaBuffer AllocateCommonBuffer(int length)
    {
        var buffer = AllocateBuffer(length);
        Map(buffer, DmaAccess.ReadWrite);
        return buffer;
    }

    public DmaBuffer AllocateBuffer(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        var pages = (length + PageSize - 1) / PageSize;
        lock (_gate)
        {
            var run = 0;
            for (var i = 0; i < _used.Length; i++)
            {
                run = _used[i] ? 0 : run + 1;
                if (run == pages)
                {
                    var first = i - pages + 1;
                    Array.Fill(_used, true, first, pages);
                    var memory = _window.Memory.Slice(first * PageSize, length);
                    memory.Span.Clear();
                    return DmaBuffer.Create(memory, first * PageSize, pages, _deviceAddress);
                }
            }
        }

        throw new InsufficientMemoryException($"the DMA window of {RequesterId} ({WindowBytes} bytes) has no {pages} free pages in a row");
    }

    public ulong Map(DmaBuffer buffer, DmaAccess access)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        ObjectDisposedException.ThrowIf(buffer.IsFreed, buffer);
        _link.DmaMap(_deviceId, buffer.WindowOffset / PageSize, buffer.Pages, access);
        buffer.SetMapped(true);
        return buffer.DeviceAddress;
    }

    public void Unmap(DmaBuffer buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (!buffer.IsMapped)
        {
            return;
        }

        buffer.SetMapped(false);
        _link.DmaUnmap(_deviceId, buffer.WindowOffset / PageSize, buffer.Pages);
    }

    public void Free(DmaBuffer buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (buffer.IsFreed)
        {
            return;
        }

        Unmap(buffer);
        buffer.SetFreed();
        lock (_gate)
        {
            Array.Fill(_used, false, buffer.WindowOffset / PageSize, buffer.Pages);
        }
    }

    public void WriteRegister(int registerIndex, ulong value) => _link.WriteRegister(_deviceId, registerIndex, value);

    public void ConnectInterrupt(Action<int> serviceRoutine) => _serviceRoutine = serviceRoutine;

    /// <summary>The device interrupted: run the service routine (one at a time).</summary>
    public void Interrupt(int vector)
    {
        if (_serviceRoutine is { } isr)
        {
            lock (_interruptGate)
            {
                isr(vector);
            }
        }
    }

    public void Dispose() => ((IDisposable)_window).Dispose();
}
