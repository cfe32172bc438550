using DriverIsolation.Hardware;

namespace DriverIsolation.Drivers.VNic;

/// <summary>
/// One NIC's rings as its driver keeps them. Transmit: ringSize - 1 slots, each with a bounce
/// buffer; a Write waits for a slot, is copied in, mapped, put on the ring, and completes when
/// the device marks it done. Receive: every slot but one holds a posted buffer; each frame the
/// device delivers is copied out, the buffer re-posted, and the frame handed to a waiting Read
/// (or kept, up to 256 frames, for the next one).
/// </summary>
internal sealed class VNicController
{
    private const int KeptFrames = 256;

    private readonly IDeviceHardware _hardware;
    private readonly int _size;
    private readonly DmaBuffer _txRing;
    private readonly DmaBuffer _rxRing;
    private readonly DmaBuffer[] _txBuffers;
    private readonly Irp?[] _txIrps;
    private readonly DmaBuffer[] _rxBuffers;
    private readonly Queue<Irp> _txWaiting = new();
    private readonly Queue<Irp> _readers = new();
    private readonly Queue<byte[]> _frames = new();
    private readonly Lock _gate = new();
    private int _txTail;
    private int _txClean;
    private int _txInFlight;
    private int _rxNext;

    public VNicController(IDeviceHardware hardware, int size)
    {
        _hardware = hardware;
        _size = size;
        _txRing = hardware.AllocateCommonBuffer(size * NicSpec.DescriptorSize);
        _rxRing = hardware.AllocateCommonBuffer(size * NicSpec.DescriptorSize);
        _txBuffers = new DmaBuffer[size];
        _txIrps = new Irp?[size];
        _rxBuffers = new DmaBuffer[size];
        for (var i = 0; i < size; i++)
        {
            _txBuffers[i] = hardware.AllocateBuffer(NicSpec.MaxFrameBytes);
            _rxBuffers[i] = hardware.AllocateBuffer(NicSpec.MaxFrameBytes);
        }

        hardware.ConnectInterrupt(OnInterrupt);
        hardware.WriteRegister(NicSpec.RegTransmitRingBase, _txRing.DeviceAddress);
        hardware.WriteRegister(NicSpec.RegReceiveRingBase, _rxRing.DeviceAddress);
        hardware.WriteRegister(NicSpec.RegRingSize, (ulong)size);
        hardware.WriteRegister(NicSpec.RegControl, NicSpec.ControlEnable);

        // Post every receive buffer but one (a full ring would look empty).
        for (var i = 0; i < size - 1; i++)
        {
            Post(i);
        }

        hardware.WriteRegister(NicSpec.RegReceiveTail, (ulong)(size - 1));
    }

    public NtStatus Send(Irp irp)
    {
        if (irp.InputBuffer.Length is 0 or > NicSpec.MaxFrameBytes)
        {
            irp.Complete(NtStatus.InvalidParameter);
            return NtStatus.InvalidParameter;
        }

        irp.MarkPending();
        lock (_gate)
        {
            _txWaiting.Enqueue(irp);
            StartTransmit();
        }

        return NtStatus.Pending;
    }

    public NtStatus Receive(Irp irp)
    {
        byte[]? frame;
        lock (_gate)
        {
            if (!_frames.TryDequeue(out frame))
            {
                if (irp.MarkCancelable(CancelRead) != NtStatus.Success)
                {
                    irp.Complete(NtStatus.Cancelled);
                    return NtStatus.Cancelled;
                }

                irp.MarkPending();
                _readers.Enqueue(irp);
                return NtStatus.Pending;
            }
        }

        return Deliver(irp, frame);
    }

    private void CancelRead(Irp irp)
    {
        lock (_gate)
        {
            var kept = _readers.Where(r => r != irp).ToList();
            _readers.Clear();
            kept.ForEach(_readers.Enqueue);
        }

        irp.Complete(NtStatus.Cancelled);
    }

    private static NtStatus Deliver(Irp irp, byte[] frame)
    {
        var length = Math.Min(frame.Length, irp.OutputBuffer.Length);
        frame.AsSpan(0, length).CopyTo(irp.OutputBuffer.Span);
        var status = length < frame.Length ? NtStatus.BufferTooSmall : NtStatus.Success;
        irp.Complete(status, length);
        return status;
    }

    private void StartTransmit()
    {
        var rang = false;
        while (_txWaiting.Count > 0 && _txInFlight < _size - 1)
        {
            var irp = _txWaiting.Dequeue();
            var slot = _txTail;
            var buffer = _txBuffers[slot];
            irp.InputBuffer.Span.CopyTo(buffer.Memory.Span);
            var address = _hardware.Map(buffer, DmaAccess.Read);
            NicSpec.WriteDescriptor(_txRing.Memory.Span.Slice(slot * NicSpec.DescriptorSize), address, (ushort)irp.InputBuffer.Length);
            _txIrps[slot] = irp;
            _txTail = (_txTail + 1) % _size;
            _txInFlight++;
            rang = true;
        }

        if (rang)
        {
            _hardware.WriteRegister(NicSpec.RegTransmitTail, (ulong)_txTail);
        }
    }

    private void Post(int slot)
    {
        var address = _hardware.Map(_rxBuffers[slot], DmaAccess.Write);
        NicSpec.WriteDescriptor(_rxRing.Memory.Span.Slice(slot * NicSpec.DescriptorSize), address, NicSpec.MaxFrameBytes);
    }

    private void OnInterrupt(int vector)
    {
        var sent = new List<(Irp Irp, byte Status)>();
        var delivered = new List<(Irp Irp, byte[] Frame)>();
        lock (_gate)
        {
            // Transmit completions, in ring order.
            while (_txInFlight > 0)
            {
                var (_, _, flags, status) = NicSpec.ReadDescriptor(_txRing.Memory.Span.Slice(_txClean * NicSpec.DescriptorSize));
                if ((flags & NicSpec.FlagDone) == 0)
                {
                    break;
                }

                _hardware.Unmap(_txBuffers[_txClean]);
                sent.Add((_txIrps[_txClean]!, status));
                _txIrps[_txClean] = null;
                _txClean = (_txClean + 1) % _size;
                _txInFlight--;
            }

            StartTransmit();

            // Received frames, in ring order; each buffer goes back on the ring.
            var posted = false;
            while (true)
            {
                var (_, length, flags, status) = NicSpec.ReadDescriptor(_rxRing.Memory.Span.Slice(_rxNext * NicSpec.DescriptorSize));
                if ((flags & NicSpec.FlagDone) == 0)
                {
                    break;
                }

                _hardware.Unmap(_rxBuffers[_rxNext]);
                if (status == NicSpec.StatusSuccess)
                {
                    var frame = _rxBuffers[_rxNext].Memory.Span[..length].ToArray();
                    Irp? reader = null;
                    while (reader is null && _readers.TryDequeue(out var waiting))
                    {
                        // A reader whose cancel routine already runs is that routine's to complete.
                        reader = waiting.UnmarkCancelable() == NtStatus.Success ? waiting : null;
                    }

                    if (reader is not null)
                    {
                        delivered.Add((reader, frame));
                    }
                    else if (_frames.Count < KeptFrames)
                    {
                        _frames.Enqueue(frame);
                    }
                }

                // The slot just emptied is re-posted behind the device's tail.
                var behind = (_rxNext + _size - 1) % _size;
                Post(behind);
                _rxNext = (_rxNext + 1) % _size;
                posted = true;
            }

            if (posted)
            {
                _hardware.WriteRegister(NicSpec.RegReceiveTail, (ulong)((_rxNext + _size - 1) % _size));
            }
        }

        foreach (var (irp, status) in sent)
        {
            irp.Complete(status == NicSpec.StatusSuccess ? NtStatus.Success : NtStatus.DeviceReset, status == NicSpec.StatusSuccess ? irp.InputBuffer.Length : 0);
        }

        foreach (var (irp, frame) in delivered)
        {
            Deliver(irp, frame);
        }
    }
}
