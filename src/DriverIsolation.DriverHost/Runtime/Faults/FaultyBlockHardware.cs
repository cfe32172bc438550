using System.Buffers.Binary;
using DriverIsolation.Hardware;

namespace DriverIsolation.DriverHost;

/// <summary>
/// The fault shim's hand on a block device: it passes every call of the driver through to the
/// real hardware and watches how the driver programs it (which common buffer is the submission
/// queue, its depth, which buffers are mapped). When a DMA fault is armed, the next doorbell the
/// driver rings that queues a transfer has its command tampered with before the doorbell reaches
/// the device: turned into a device read (the device writes memory) aimed at the fault's address,
/// or left as it is with its buffer unmapped under it. That is what a driver with a corrupt pointer
/// or an early unmap does to its device; the device model, the IOMMU and the kernel's canaries
/// decide what happens next, exactly as for a driver written badly.
/// </summary>
internal sealed class FaultyBlockHardware(IDeviceHardware inner) : IDeviceHardware
{
    private const int PageSize = 4096;
    private readonly Lock _gate = new();
    private readonly List<DmaBuffer> _common = [];
    private readonly HashSet<DmaBuffer> _mapped = [];
    private DmaBuffer? _submissions;
    private int _depth;
    private ulong? _windowBase;
    private (string Fault, ulong? Address)? _armed;

    /// <summary>The hardware underneath.</summary>
    public IDeviceHardware Inner => inner;

    public string Kind => inner.Kind;

    public string RequesterId => inner.RequesterId;

    public IReadOnlyDictionary<string, string> Properties => inner.Properties;

    public int WindowBytes => inner.WindowBytes;

    /// <summary>Arms the next doorbell that queues a transfer. <paramref name="fault"/> says what
    /// to do to it: "dma-after-unmap" unmaps the command's buffer before the device gets the
    /// doorbell (a driver that unmaps too early; the device uses the address anyway);
    /// "wild-dma-unmapped" aims it at the highest page of the window nothing is mapped at; anything
    /// else aims it at <paramref name="address"/>.</summary>
    public void Arm(string fault, ulong? address)
    {
        lock (_gate)
        {
            _armed = (fault, address);
        }
    }

    public DmaBuffer AllocateCommonBuffer(int length)
    {
        var buffer = inner.AllocateCommonBuffer(length);
        lock (_gate)
        {
            _common.Add(buffer);
            _windowBase ??= buffer.DeviceAddress - (ulong)buffer.WindowOffset;
        }

        return buffer;
    }

    public DmaBuffer AllocateBuffer(int length) => inner.AllocateBuffer(length);

    public ulong Map(DmaBuffer buffer, DmaAccess access)
    {
        var address = inner.Map(buffer, access);
        lock (_gate)
        {
            _mapped.Add(buffer);
            _windowBase ??= address - (ulong)buffer.WindowOffset;
        }

        return address;
    }

    public void Unmap(DmaBuffer buffer)
    {
        inner.Unmap(buffer);
        Forget(buffer);
    }

    public void Free(DmaBuffer buffer)
    {
        inner.Free(buffer);
        Forget(buffer);
    }

    public void WriteRegister(int registerIndex, ulong value)
    {
        lock (_gate)
        {
            switch (registerIndex)
            {
                case BlockDeviceSpec.RegSubmissionQueueBase:
                    _submissions = _common.Find(b => b.IsMapped && b.DeviceAddress == value);
                    break;
                case BlockDeviceSpec.RegQueueDepth:
                    _depth = (int)Math.Min(value, BlockDeviceSpec.MaxQueueDepth);
                    break;
                case BlockDeviceSpec.RegSubmissionTail when _armed is { } armed && _submissions is { } queue && _depth > 0:
                    var slot = (int)((value + (ulong)_depth - 1) % (ulong)_depth);
                    if (Act(queue.Memory.Span.Slice(slot * BlockDeviceSpec.CommandSize, BlockDeviceSpec.CommandSize), armed.Fault, armed.Address))
                    {
                        _armed = null;
                    }

                    break;
            }
        }

        inner.WriteRegister(registerIndex, value);
    }

    public void ConnectInterrupt(Action<int> serviceRoutine) => inner.ConnectInterrupt(serviceRoutine);

    /// <summary>Does the armed fault to the command just queued; false (nothing done, the fault
    /// waits for the next doorbell) for a flush, which moves no data, or while there is nothing
    /// to aim at.</summary>
    private bool Act(Span<byte> command, string fault, ulong? address)
    {
        var (opcode, _, _, sectors, data) = BlockDeviceSpec.ReadCommand(command);
        if (opcode is not (BlockDeviceSpec.OpRead or BlockDeviceSpec.OpWrite) || sectors == 0)
        {
            return false;
        }

        if (fault == "dma-after-unmap")
        {
            if (_mapped.FirstOrDefault(b => b.IsMapped && data >= b.DeviceAddress && data < b.DeviceAddress + (ulong)b.Length) is not { } buffer)
            {
                return false;
            }

            // The driver's own unmap at completion then finds the buffer unmapped and does nothing.
            inner.Unmap(buffer);
            _mapped.Remove(buffer);
            return true;
        }

        var target = fault == "wild-dma-unmapped" ? UnmappedPage() : address;
        if (target is not { } aim)
        {
            return false;
        }

        command[0] = BlockDeviceSpec.OpRead;
        BinaryPrimitives.WriteUInt64LittleEndian(command[24..], aim);
        return true;
    }

    /// <summary>The highest page of the window that nothing is mapped at now (null before the
    /// driver mapped anything, while the window's device address is not known).</summary>
    private ulong? UnmappedPage()
    {
        if (_windowBase is not { } windowBase)
        {
            return null;
        }

        for (var page = (WindowBytes / PageSize) - 1; page >= 0; page--)
        {
            var offset = page * PageSize;
            if (!_common.Concat(_mapped).Any(b => offset >= b.WindowOffset && offset < b.WindowOffset + (b.Pages * PageSize)))
            {
                return windowBase + (ulong)offset;
            }
        }

        return null;
    }

    private void Forget(DmaBuffer buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        lock (_gate)
        {
            _mapped.Remove(buffer);
            _common.Remove(buffer);
        }
    }
}
