using System.Globalization;
using DriverIsolation.Hardware;

namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// A block device with one submission queue and one completion queue in DMA memory (see
/// <see cref="BlockDeviceSpec"/>). A doorbell write of the submission tail makes it fetch each new
/// command, move the data between its media and memory by DMA, post a completion and interrupt.
/// A command whose data DMA the IOMMU blocks completes with StatusDmaError; a device that cannot
/// even fetch a command or post a completion stops until it is reset, as real hardware does.
/// </summary>
public sealed class BlockDeviceModel : DeviceModel
{
    private readonly byte[] _media;
    private readonly Lock _gate = new();
    private ulong _sqBase;
    private ulong _cqBase;
    private int _depth;
    private bool _enabled;
    private bool _halted;
    private int _sqHead;
    private int _sqTail;
    private int _cqTail;
    private int _cqHead;
    private bool _phase = true;
    private long _commands;

    public BlockDeviceModel(string name, RequesterId requester, DmaEngine dma, int capacityBytes)
        : base(name, requester, dma)
    {
        if (capacityBytes <= 0 || capacityBytes % BlockDeviceSpec.SectorSize != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(capacityBytes), capacityBytes, "a block device holds a positive number of 512-byte sectors");
        }

        _media = new byte[capacityBytes];
        Properties = new Dictionary<string, string>
        {
            ["capacityBytes"] = capacityBytes.ToString(CultureInfo.InvariantCulture),
            ["sectorSize"] = BlockDeviceSpec.SectorSize.ToString(CultureInfo.InvariantCulture),
            ["maxQueueDepth"] = BlockDeviceSpec.MaxQueueDepth.ToString(CultureInfo.InvariantCulture),
        };
    }

    public override string Kind => "block";

    public override IReadOnlyDictionary<string, string> Properties { get; }

    /// <summary>The device's own copy of the data (tests compare it with a model).</summary>
    public ReadOnlySpan<byte> Media => _media;

    public long CommandsCompleted => Interlocked.Read(ref _commands);

    /// <summary>True after a DMA of a queue entry was blocked: the device waits for a reset.</summary>
    public bool Halted
    {
        get
        {
            lock (_gate)
            {
                return _halted;
            }
        }
    }

    public override ulong? WorkRing => _sqBase == 0 ? null : _sqBase;

    public override void WriteRegister(int registerIndex, ulong value)
    {
        lock (_gate)
        {
            switch (registerIndex)
            {
                case BlockDeviceSpec.RegSubmissionQueueBase:
                    _sqBase = value;
                    break;
                case BlockDeviceSpec.RegCompletionQueueBase:
                    _cqBase = value;
                    break;
                case BlockDeviceSpec.RegQueueDepth:
                    _depth = (int)Math.Clamp(value, 2UL, BlockDeviceSpec.MaxQueueDepth);
                    break;
                case BlockDeviceSpec.RegControl:
                    ResetLocked();
                    _enabled = (value & BlockDeviceSpec.ControlEnable) != 0;
                    break;
                case BlockDeviceSpec.RegSubmissionTail when _enabled && value < (ulong)_depth:
                    _sqTail = (int)value;
                    break;
                case BlockDeviceSpec.RegCompletionHead when _enabled && value < (ulong)_depth:
                    _cqHead = (int)value;
                    break;
                default:
                    return; // Writes to unknown registers, or out of range, are ignored.
            }
        }

        if (registerIndex is BlockDeviceSpec.RegSubmissionTail or BlockDeviceSpec.RegCompletionHead)
        {
            Process();
        }
    }

    public override void Reset()
    {
        lock (_gate)
        {
            ResetLocked();
            _sqBase = _cqBase = 0;
            _depth = 0;
        }
    }

    private void ResetLocked()
    {
        _enabled = false;
        _halted = false;
        _sqHead = _sqTail = _cqHead = _cqTail = 0;
        _phase = true;
    }

    private void Process()
    {
        var posted = 0;
        lock (_gate)
        {
            Span<byte> entry = stackalloc byte[BlockDeviceSpec.CommandSize];
            Span<byte> completion = stackalloc byte[BlockDeviceSpec.CompletionSize];
            // Stop when the completion queue is full: one slot stays empty to tell full from empty.
            while (_enabled && !_halted && _sqHead != _sqTail && (_cqTail + 1) % _depth != _cqHead)
            {
                if (!Read(_sqBase + ((ulong)_sqHead * BlockDeviceSpec.CommandSize), entry))
                {
                    _halted = true;
                    break;
                }

                _sqHead = (_sqHead + 1) % _depth;
                var (opcode, id, sector, sectors, address) = BlockDeviceSpec.ReadCommand(entry);
                var status = Execute(opcode, sector, sectors, address);
                BlockDeviceSpec.WriteCompletion(completion, id, status, (ushort)_sqHead, _phase);
                if (!WritePublishingLast(_cqBase + ((ulong)_cqTail * BlockDeviceSpec.CompletionSize), completion, BlockDeviceSpec.CompletionPhaseOffset))
                {
                    _halted = true;
                    break;
                }

                _cqTail = (_cqTail + 1) % _depth;
                if (_cqTail == 0)
                {
                    _phase = !_phase;
                }

                posted++;
                Interlocked.Increment(ref _commands);
            }
        }

        if (posted > 0)
        {
            RaiseInterrupt(0);
        }
    }

    private ushort Execute(byte opcode, ulong sector, uint sectors, ulong address)
    {
        if (opcode == BlockDeviceSpec.OpFlush)
        {
            return BlockDeviceSpec.StatusSuccess;
        }

        if (opcode is not (BlockDeviceSpec.OpRead or BlockDeviceSpec.OpWrite) || sectors == 0 || sectors > 2048)
        {
            return BlockDeviceSpec.StatusInvalidCommand;
        }

        var capacity = (ulong)_media.Length / BlockDeviceSpec.SectorSize;
        if (sector >= capacity || sectors > capacity - sector)
        {
            return BlockDeviceSpec.StatusOutOfRange;
        }

        var media = _media.AsSpan((int)sector * BlockDeviceSpec.SectorSize, (int)sectors * BlockDeviceSpec.SectorSize);
        var ok = opcode == BlockDeviceSpec.OpRead ? Write(address, media) : Read(address, media);
        return ok ? BlockDeviceSpec.StatusSuccess : BlockDeviceSpec.StatusDmaError;
    }
}
