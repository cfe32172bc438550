using DriverIsolation.Hardware;

namespace DriverIsolation.Drivers.VBlock;

/// <summary>
/// One block device's queues, as its driver keeps them. A submission queue and a completion queue
/// live in common buffers (mapped for the device for as long as the driver lives); each of the
/// depth - 1 command slots has a bounce buffer that is mapped only while its command runs (read
/// access for a write, write access for a read), so the device can reach a request's data only
/// while the request is in flight. The interrupt service routine walks the completion queue by
/// its phase bit, unmaps, completes, and starts whatever was waiting for a slot.
/// </summary>
internal sealed class VBlockController
{
    private readonly IDeviceHardware _hardware;
    private readonly int _depth;
    private readonly int _maxTransfer;
    private readonly DmaBuffer _submissions;
    private readonly DmaBuffer _completions;
    private readonly Slot[] _slots;
    private readonly Stack<int> _free = new();
    private readonly Queue<Chunk> _waiting = new();
    private readonly Lock _gate = new();
    private int _submissionTail;
    private int _completionHead;
    private bool _phase = true;

    public VBlockController(IDeviceHardware hardware, int depth, int maxTransfer, long capacity)
    {
        _hardware = hardware;
        _depth = depth;
        _maxTransfer = maxTransfer;
        Capacity = capacity;
        _submissions = hardware.AllocateCommonBuffer(depth * BlockDeviceSpec.CommandSize);
        _completions = hardware.AllocateCommonBuffer(depth * BlockDeviceSpec.CompletionSize);

        // One slot fewer than the queue depth: the completion queue can never overflow.
        _slots = new Slot[depth - 1];
        for (var i = _slots.Length - 1; i >= 0; i--)
        {
            _slots[i] = new Slot(hardware.AllocateBuffer(maxTransfer));
            _free.Push(i);
        }

        hardware.ConnectInterrupt(OnInterrupt);
        hardware.WriteRegister(BlockDeviceSpec.RegSubmissionQueueBase, _submissions.DeviceAddress);
        hardware.WriteRegister(BlockDeviceSpec.RegCompletionQueueBase, _completions.DeviceAddress);
        hardware.WriteRegister(BlockDeviceSpec.RegQueueDepth, (ulong)depth);
        hardware.WriteRegister(BlockDeviceSpec.RegControl, BlockDeviceSpec.ControlEnable);
    }

    public long Capacity { get; }

    /// <summary>Queues an IRP as one command per maxTransferBytes (a flush is one command).</summary>
    public NtStatus Submit(Irp irp, byte opcode)
    {
        irp.MarkPending();
        var length = opcode == BlockDeviceSpec.OpRead ? irp.OutputBuffer.Length : opcode == BlockDeviceSpec.OpWrite ? irp.InputBuffer.Length : 0;
        var request = new Request(irp, opcode, Math.Max(1, (length + _maxTransfer - 1) / _maxTransfer));
        lock (_gate)
        {
            for (var offset = 0; offset < Math.Max(length, 1); offset += _maxTransfer)
            {
                _waiting.Enqueue(new Chunk(request, offset, Math.Min(_maxTransfer, length - offset)));
            }

            StartWaiting();
        }

        return NtStatus.Pending;
    }

    private void StartWaiting()
    {
        var rang = false;
        while (_waiting.Count > 0 && _free.Count > 0)
        {
            var chunk = _waiting.Dequeue();
            var index = _free.Pop();
            var slot = _slots[index];
            slot.Chunk = chunk;
            var irp = chunk.Request.Irp;
            ulong address = 0;
            if (chunk.Request.Opcode == BlockDeviceSpec.OpWrite)
            {
                irp.InputBuffer.Span.Slice(chunk.Offset, chunk.Length).CopyTo(slot.Buffer.Memory.Span);
                address = _hardware.Map(slot.Buffer, DmaAccess.Read);
            }
            else if (chunk.Request.Opcode == BlockDeviceSpec.OpRead)
            {
                address = _hardware.Map(slot.Buffer, DmaAccess.Write);
            }

            var sector = (ulong)(irp.Offset + chunk.Offset) / BlockDeviceSpec.SectorSize;
            var entry = _submissions.Memory.Span.Slice(_submissionTail * BlockDeviceSpec.CommandSize, BlockDeviceSpec.CommandSize);
            BlockDeviceSpec.WriteCommand(entry, chunk.Request.Opcode, (ushort)index, sector, (uint)(chunk.Length / BlockDeviceSpec.SectorSize), address);
            _submissionTail = (_submissionTail + 1) % _depth;
            rang = true;
        }

        if (rang)
        {
            _hardware.WriteRegister(BlockDeviceSpec.RegSubmissionTail, (ulong)_submissionTail);
        }
    }

    private void OnInterrupt(int vector)
    {
        List<(Irp Irp, NtStatus Status, long Information)>? done = null;
        lock (_gate)
        {
            var consumed = false;
            while (true)
            {
                var entry = _completions.Memory.Span.Slice(_completionHead * BlockDeviceSpec.CompletionSize, BlockDeviceSpec.CompletionSize);
                var (id, status, _, phase) = BlockDeviceSpec.ReadCompletion(entry);
                if (phase != _phase)
                {
                    break;
                }

                consumed = true;
                _completionHead = (_completionHead + 1) % _depth;
                if (_completionHead == 0)
                {
                    _phase = !_phase;
                }

                if (id >= _slots.Length || _slots[id].Chunk is not { } chunk)
                {
                    continue; // Not a command of ours: a confused device; nothing to complete.
                }

                var slot = _slots[id];
                _hardware.Unmap(slot.Buffer);
                slot.Chunk = null;
                _free.Push(id);
                var request = chunk.Request;
                if (status == BlockDeviceSpec.StatusSuccess && request.Opcode == BlockDeviceSpec.OpRead)
                {
                    slot.Buffer.Memory.Span[..chunk.Length].CopyTo(request.Irp.OutputBuffer.Span.Slice(chunk.Offset, chunk.Length));
                }

                if (status != BlockDeviceSpec.StatusSuccess && request.Status == NtStatus.Success)
                {
                    request.Status = status switch
                    {
                        BlockDeviceSpec.StatusOutOfRange => NtStatus.InvalidParameter,
                        BlockDeviceSpec.StatusInvalidCommand => NtStatus.InvalidDeviceRequest,
                        _ => NtStatus.DeviceReset,
                    };
                }

                if (--request.Remaining == 0)
                {
                    var length = request.Opcode == BlockDeviceSpec.OpRead ? request.Irp.OutputBuffer.Length : request.Irp.InputBuffer.Length;
                    (done ??= []).Add((request.Irp, request.Status, request.Status == NtStatus.Success ? length : 0));
                }
            }

            if (consumed)
            {
                _hardware.WriteRegister(BlockDeviceSpec.RegCompletionHead, (ulong)_completionHead);
            }

            StartWaiting();
        }

        foreach (var (irp, status, information) in done ?? [])
        {
            irp.Complete(status, information);
        }
    }

    private sealed class Slot(DmaBuffer buffer)
    {
        public DmaBuffer Buffer { get; } = buffer;

        public Chunk? Chunk { get; set; }
    }

    private sealed class Request(Irp irp, byte opcode, int chunks)
    {
        public Irp Irp { get; } = irp;

        public byte Opcode { get; } = opcode;

        public int Remaining { get; set; } = chunks;

        public NtStatus Status { get; set; } = NtStatus.Success;
    }

    private sealed record Chunk(Request Request, int Offset, int Length);
}
