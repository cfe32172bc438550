using System.Buffers.Binary;
using DriverIsolation.Hardware;

namespace DriverIsolation.TestDrivers;

/// <summary>
/// A block driver that programs its device badly on request, for the IOMMU's tests. Each control
/// request runs one device read of one sector (the device writes 512 bytes of its media into
/// memory) and completes with the device's completion status as its information:
/// <see cref="DmaTo"/> points the read at any address the caller gives (the kernel region, another
/// driver's buffer, an unmapped page); <see cref="DmaAfterUnmap"/> maps a buffer, reads into it
/// properly, unmaps it, then reads into it again (a use after unmap).
/// </summary>
public sealed class WildBlockDriver : IDriver
{
    public static readonly uint DmaTo = IoControlCode.Make(DeviceType.Disk, 0x901);
    public static readonly uint DmaAfterUnmap = IoControlCode.Make(DeviceType.Disk, 0x902);

    /// <summary>A proper read: map a buffer, read into it, unmap it.</summary>
    public static readonly uint ReadProperly = IoControlCode.Make(DeviceType.Disk, 0x903);

    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver.AddDevice = (_, device) =>
        {
            if (device.Hardware is not { } hardware)
            {
                return NtStatus.DeviceNotReady;
            }

            device.Extension = new Queues(hardware);
            return NtStatus.Success;
        };
        driver[MajorFunction.DeviceControl] = DeviceControl;
        return NtStatus.Success;
    }

    private static NtStatus DeviceControl(DeviceObject device, Irp irp)
    {
        var queues = device.GetExtension<Queues>();
        irp.MarkPending();
        if (irp.IoControlCode == DmaTo && irp.InputBuffer.Length >= 8)
        {
            queues.Read(BinaryPrimitives.ReadUInt64LittleEndian(irp.InputBuffer.Span), status => irp.Complete(NtStatus.Success, status));
        }
        else if (irp.IoControlCode == ReadProperly)
        {
            var buffer = queues.Hardware.AllocateBuffer(4096);
            queues.Read(queues.Hardware.Map(buffer, DmaAccess.Write), status =>
            {
                queues.Hardware.Free(buffer);
                irp.Complete(NtStatus.Success, status);
            });
        }
        else if (irp.IoControlCode == DmaAfterUnmap)
        {
            var buffer = queues.Hardware.AllocateBuffer(4096);
            var address = queues.Hardware.Map(buffer, DmaAccess.Write);
            queues.Read(address, first =>
            {
                queues.Hardware.Unmap(buffer);
                queues.Read(address, second => irp.Complete(NtStatus.Success, (first << 16) | second));
            });
        }
        else
        {
            irp.Complete(NtStatus.InvalidDeviceRequest);
        }

        return NtStatus.Pending;
    }

    private sealed class Queues
    {
        private const int Depth = 4;
        private readonly DmaBuffer _submissions;
        private readonly DmaBuffer _completions;
        private readonly Lock _gate = new();
        private readonly Action<int>?[] _waiting = new Action<int>?[Depth];
        private int _tail;
        private int _head;
        private bool _phase = true;

        public Queues(IDeviceHardware hardware)
        {
            Hardware = hardware;
            _submissions = hardware.AllocateCommonBuffer(Depth * BlockDeviceSpec.CommandSize);
            _completions = hardware.AllocateCommonBuffer(Depth * BlockDeviceSpec.CompletionSize);
            hardware.ConnectInterrupt(_ => OnInterrupt());
            hardware.WriteRegister(BlockDeviceSpec.RegSubmissionQueueBase, _submissions.DeviceAddress);
            hardware.WriteRegister(BlockDeviceSpec.RegCompletionQueueBase, _completions.DeviceAddress);
            hardware.WriteRegister(BlockDeviceSpec.RegQueueDepth, Depth);
            hardware.WriteRegister(BlockDeviceSpec.RegControl, BlockDeviceSpec.ControlEnable);
        }

        public IDeviceHardware Hardware { get; }

        public void Read(ulong address, Action<int> done)
        {
            lock (_gate)
            {
                var id = _tail;
                _waiting[id] = done;
                BlockDeviceSpec.WriteCommand(_submissions.Memory.Span.Slice(_tail * BlockDeviceSpec.CommandSize), BlockDeviceSpec.OpRead, (ushort)id, 0, 1, address);
                _tail = (_tail + 1) % Depth;
                Hardware.WriteRegister(BlockDeviceSpec.RegSubmissionTail, (ulong)_tail);
            }
        }

        private void OnInterrupt()
        {
            var done = new List<(Action<int>, int)>();
            lock (_gate)
            {
                while (BlockDeviceSpec.ReadCompletion(_completions.Memory.Span.Slice(_head * BlockDeviceSpec.CompletionSize)) is var (id, status, _, phase) && phase == _phase)
                {
                    _head = (_head + 1) % Depth;
                    _phase ^= _head == 0;
                    if (id < Depth && _waiting[id] is { } callback)
                    {
                        _waiting[id] = null;
                        done.Add((callback, status));
                    }
                }

                Hardware.WriteRegister(BlockDeviceSpec.RegCompletionHead, (ulong)_head);
            }

            foreach (var (callback, status) in done)
            {
                callback(status);
            }
        }
    }
}
