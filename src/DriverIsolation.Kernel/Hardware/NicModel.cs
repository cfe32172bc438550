using System.Globalization;
using DriverIsolation.Hardware;

namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// A NIC with a transmit ring and a receive ring (see <see cref="NicSpec"/>), wired back to back
/// with a peer: a frame this one transmits arrives at the peer. Frames that arrive while no
/// receive buffer is posted wait in a small on-device FIFO; past it they are dropped and counted,
/// as a real NIC drops them.
/// </summary>
public sealed class NicModel : DeviceModel
{
    private const int FifoFrames = 256;

    private readonly Lock _tx = new();
    private readonly Lock _rx = new();
    private readonly Queue<byte[]> _fifo = new();
    private ulong _txBase;
    private ulong _rxBase;
    private int _size;
    private bool _enabled;
    private int _txHead;
    private int _txTail;
    private int _rxHead;
    private int _rxTail;
    private long _sent;
    private long _received;
    private long _dropped;

    public NicModel(string name, RequesterId requester, DmaEngine dma, string mac)
        : base(name, requester, dma)
    {
        Properties = new Dictionary<string, string>
        {
            ["mac"] = mac,
            ["maxFrameBytes"] = NicSpec.MaxFrameBytes.ToString(CultureInfo.InvariantCulture),
            ["maxRingSize"] = NicSpec.MaxRingSize.ToString(CultureInfo.InvariantCulture),
        };
    }

    public override string Kind => "nic";

    public override IReadOnlyDictionary<string, string> Properties { get; }

    /// <summary>The NIC at the other end of the wire.</summary>
    public NicModel? Peer { get; set; }

    public long FramesSent => Interlocked.Read(ref _sent);

    public long FramesReceived => Interlocked.Read(ref _received);

    public long FramesDropped => Interlocked.Read(ref _dropped);

    public override ulong? WorkRing
    {
        get
        {
            lock (_rx)
            {
                return _rxBase == 0 ? null : _rxBase;
            }
        }
    }

    public override void WriteRegister(int registerIndex, ulong value)
    {
        switch (registerIndex)
        {
            case NicSpec.RegTransmitRingBase:
                lock (_tx)
                {
                    _txBase = value;
                }

                break;
            case NicSpec.RegReceiveRingBase:
                lock (_rx)
                {
                    _rxBase = value;
                }

                break;
            case NicSpec.RegRingSize:
                lock (_tx)
                {
                    lock (_rx)
                    {
                        _size = (int)Math.Clamp(value, 2UL, NicSpec.MaxRingSize);
                    }
                }

                break;
            case NicSpec.RegControl:
                lock (_tx)
                {
                    lock (_rx)
                    {
                        _txHead = _txTail = _rxHead = _rxTail = 0;
                        _enabled = (value & NicSpec.ControlEnable) != 0;
                    }
                }

                break;
            case NicSpec.RegTransmitTail:
                Transmit(value);
                break;
            case NicSpec.RegReceiveTail:
                lock (_rx)
                {
                    if (!_enabled || value >= (ulong)_size)
                    {
                        return;
                    }

                    _rxTail = (int)value;
                }

                DrainReceive();
                break;
            default:
                break;
        }
    }

    public override void Reset()
    {
        lock (_tx)
        {
            lock (_rx)
            {
                _enabled = false;
                _txBase = _rxBase = 0;
                _size = 0;
                _txHead = _txTail = _rxHead = _rxTail = 0;
                _fifo.Clear();
            }
        }
    }

    /// <summary>A frame arrives from the wire.</summary>
    public void Deliver(byte[] frame)
    {
        lock (_rx)
        {
            if (!_enabled || _fifo.Count >= FifoFrames)
            {
                Interlocked.Increment(ref _dropped);
                return;
            }

            _fifo.Enqueue(frame);
        }

        DrainReceive();
    }

    private void Transmit(ulong tail)
    {
        var frames = new List<byte[]>();
        lock (_tx)
        {
            if (!_enabled || tail >= (ulong)_size)
            {
                return;
            }

            _txTail = (int)tail;
            Span<byte> entry = stackalloc byte[NicSpec.DescriptorSize];
            while (_txHead != _txTail)
            {
                var at = _txBase + ((ulong)_txHead * NicSpec.DescriptorSize);
                if (!Read(at, entry))
                {
                    _enabled = false; // cannot even read its ring: the device stops
                    break;
                }

                var (address, length, _, _) = NicSpec.ReadDescriptor(entry);
                byte status;
                if (length > NicSpec.MaxFrameBytes)
                {
                    status = NicSpec.StatusTooLong;
                }
                else
                {
                    var frame = new byte[length];
                    status = Read(address, frame) ? NicSpec.StatusSuccess : NicSpec.StatusDmaError;
                    if (status == NicSpec.StatusSuccess)
                    {
                        frames.Add(frame);
                    }
                }

                NicSpec.WriteDescriptor(entry, address, length, NicSpec.FlagDone, status);
                if (!WritePublishingLast(at, entry, NicSpec.FlagsOffset))
                {
                    _enabled = false;
                    break;
                }

                _txHead = (_txHead + 1) % _size;
            }
        }

        if (frames.Count == 0)
        {
            return;
        }

        RaiseInterrupt(NicSpec.VectorTransmit);
        Interlocked.Add(ref _sent, frames.Count);
        foreach (var frame in frames)
        {
            Peer?.Deliver(frame);
        }
    }

    private void DrainReceive()
    {
        var delivered = 0;
        lock (_rx)
        {
            Span<byte> entry = stackalloc byte[NicSpec.DescriptorSize];
            while (_enabled && _fifo.Count > 0 && _rxHead != _rxTail)
            {
                var at = _rxBase + ((ulong)_rxHead * NicSpec.DescriptorSize);
                if (!Read(at, entry))
                {
                    _enabled = false;
                    break;
                }

                var frame = _fifo.Dequeue();
                var (address, capacity, _, _) = NicSpec.ReadDescriptor(entry);
                var status = frame.Length > capacity ? NicSpec.StatusTooLong
                    : Write(address, frame) ? NicSpec.StatusSuccess : NicSpec.StatusDmaError;
                NicSpec.WriteDescriptor(entry, address, (ushort)frame.Length, NicSpec.FlagDone, status);
                if (!WritePublishingLast(at, entry, NicSpec.FlagsOffset))
                {
                    _enabled = false;
                    break;
                }

                _rxHead = (_rxHead + 1) % _size;
                delivered++;
            }
        }

        if (delivered > 0)
        {
            Interlocked.Add(ref _received, delivered);
            RaiseInterrupt(NicSpec.VectorReceive);
        }
    }
}
