using DriverIsolation;
using DriverIsolation.Protocol;

namespace DriverIsolation.FuzzHost;

/// <summary>One thing to send: a message, or raw bytes that are not one.</summary>
internal readonly record struct Output(Message? Message, byte[]? Raw);

/// <summary>
/// Draws the fuzz host's messages. Most are plausible - completions, pass-downs, pongs, log lines,
/// DMA requests - with fields drawn from the values that sit on the kernel's checks (zero, one
/// past, negative, huge, another IRP's or device's ID, statuses that are no status); some are
/// honest, so IRPs keep flowing; a few are what no host may send (forbidden kinds, unasked
/// answers, garbage bytes), after which the kernel kills the host and the watchdog starts
/// another session.
/// </summary>
internal sealed class FuzzGenerator(int seed, int driverId)
{
    private static readonly NtStatus[] Statuses = Enum.GetValues<NtStatus>();
    private readonly Random _random = new(seed);
    private readonly List<long> _heldIrps = [];
    private readonly List<(long Irp, int Device, int OutputLength)> _seen = [];
    private readonly List<int> _devices = [];
    private readonly Dictionary<int, int> _windowPages = [];

    public IEnumerable<Output> Answer(Message message)
    {
        switch (message)
        {
            case AddDevice add:
                _devices.Add(add.DeviceId);
                if (add.Hardware is { } hardware)
                {
                    _windowPages[add.DeviceId] = hardware.WindowBytes / 4096;
                }

                yield return new(Chance(0.995) ? new DeviceAdded(add.DeviceId, NtStatus.Success, null) : new DeviceAdded(add.DeviceId, AnyStatus(), "fuzz"), null);
                break;
            case Dispatch d:
                Remember(d.IrpId, d.DeviceId, d.OutputLength);
                foreach (var output in AnswerDispatch(d))
                {
                    yield return output;
                }

                break;
            case LowerCompleted lower:
                yield return new(new Complete(lower.IrpId, lower.DeviceId, lower.Status, lower.Information, lower.Data), null);
                break;
            case Cancel cancel when Chance(0.7):
                yield return new(new Complete(cancel.IrpId, cancel.DeviceId, NtStatus.Cancelled, 0, ReadOnlyMemory<byte>.Empty), null);
                break;
            case Ping ping:
                yield return new(new Pong(Chance(0.95) ? ping.Sequence : AnyLong(), Chance(0.95) ? 50 << 20 : AnyLong(), AnyLong()), null);
                break;
        }

        // Unsolicited messages between the answers.
        var extra = _random.Next(8);
        for (var i = 0; i < extra; i++)
        {
            yield return Unsolicited();
        }
    }

    private IEnumerable<Output> AnswerDispatch(Dispatch d)
    {
        var roll = _random.NextDouble();
        if (roll < 0.45)
        {
            // Honest: the right IRP, device and length.
            var length = d.MajorFunction == MajorFunction.Read || d.MajorFunction == MajorFunction.DeviceControl ? d.OutputLength : 0;
            yield return new(new Complete(d.IrpId, d.DeviceId, NtStatus.Success, length, new byte[length]), null);
        }
        else if (roll < 0.75)
        {
            yield return new(new Complete(Pick(d.IrpId), PickDevice(d.DeviceId), AnyStatus(), AnyInformation(d.OutputLength), AnyData(d.OutputLength)), null);
        }
        else if (roll < 0.85)
        {
            yield return new(new PassDown(Pick(d.IrpId), PickDevice(d.DeviceId), Chance(0.5), AnyLong(), AnyInt(), AnyData(64)), null);
        }
        else if (roll < 0.97)
        {
            // Twice: the second must be refused.
            var complete = new Complete(d.IrpId, d.DeviceId, AnyStatus(), AnyInformation(d.OutputLength), AnyData(d.OutputLength));
            yield return new(complete, null);
            yield return new(complete, null);
        }
        else
        {
            // Left pending: its deadline ends it, and a late completion may follow some time later.
            _heldIrps.Add(d.IrpId);
        }

        if (_heldIrps.Count > 0 && Chance(0.1))
        {
            var late = _heldIrps[_random.Next(_heldIrps.Count)];
            _heldIrps.Remove(late);
            yield return new(new Complete(late, d.DeviceId, AnyStatus(), AnyInformation(d.OutputLength), AnyData(d.OutputLength)), null);
        }
    }

    private Output Unsolicited()
    {
        var roll = _random.NextDouble();
        var device = _devices.Count == 0 ? AnyInt() : PickDevice(_devices[_random.Next(_devices.Count)]);
        if (roll < 0.25)
        {
            var seen = _seen.Count == 0 ? (Irp: AnyLong(), Device: device, OutputLength: 0) : _seen[_random.Next(_seen.Count)];
            return new(new Complete(Pick(seen.Irp), PickDevice(seen.Device), AnyStatus(), AnyInformation(seen.OutputLength), AnyData(seen.OutputLength)), null);
        }

        if (roll < 0.35)
        {
            return new(new PassDown(_seen.Count == 0 ? AnyLong() : Pick(_seen[_random.Next(_seen.Count)].Irp), device, Chance(0.5), AnyLong(), AnyInt(), AnyData(256)), null);
        }

        if (roll < 0.55)
        {
            return new(new Log(Chance(0.9) ? driverId : AnyInt(), _random.Next(-3, 10), AnyText()), null);
        }

        if (roll < 0.65)
        {
            return new(new Pong(AnyLong(), Chance(0.9) ? 50 << 20 : AnyLong(), AnyLong()), null);
        }

        if (roll < 0.9995)
        {
            // DMA requests and register writes, nearly always on its own device and inside its
            // window (those are allowed); once in a while not, which ends the session.
            var own = _devices.Count == 0 ? device : _devices[_random.Next(_devices.Count)];
            var target = Chance(0.998) ? own : device;
            var pages = _windowPages.GetValueOrDefault(own, 0);
            var inside = pages > 0 && Chance(0.998);
            var first = inside ? _random.Next(pages) : AnyInt();
            var count = inside ? _random.Next(1, pages - first + 1) : AnyInt();
            return _random.Next(10) switch
            {
                < 4 => new(new DmaMap(target, first, count, Chance(0.998) ? (DmaAccess)_random.Next(1, 4) : (DmaAccess)_random.Next()), null),
                < 8 => new(new DmaUnmap(target, first, count), null),
                // Register writes reprogram the device: queues at random addresses, doorbells
                // rung with nothing behind them; a DMA the IOMMU blocks ends the session.
                _ => new(new RegisterWrite(target, _random.Next(-1, 8), Chance(0.5) ? (ulong)_random.Next(0, 64) : (ulong)AnyLong()), null),
            };
        }

        // What no host may send, or no message at all.
        return _random.Next(7) switch
        {
            0 => new(new Hello(ProtocolConstants.Version, new byte[32], Environment.ProcessId), null),
            1 => new(new Ping(AnyLong()), null),
            2 => new(new DriverLoaded(AnyInt(), AnyStatus(), null), null),
            3 => new(new DeviceAdded(AnyInt(), AnyStatus(), null), null),
            4 => new(new Interrupt(device, AnyInt()), null),
            5 => new(new Dispatch(AnyLong(), device, MajorFunction.Read, 0, 0, 0, 0, 0, ReadOnlyMemory<byte>.Empty, 0), null),
            _ => new(null, Garbage()),
        };
    }

    private void Remember(long irp, int device, int outputLength)
    {
        _seen.Add((irp, device, outputLength));
        if (_seen.Count > 64)
        {
            _seen.RemoveAt(0);
        }

        if (_heldIrps.Count > 32)
        {
            _heldIrps.RemoveAt(0);
        }
    }

    private bool Chance(double p) => _random.NextDouble() < p;

    private long Pick(long irp) => _random.Next(6) switch
    {
        0 => irp + 1,
        1 => irp - 1,
        2 => -irp,
        3 => AnyLong(),
        _ => irp,
    };

    private int PickDevice(int device) => _random.Next(6) switch
    {
        0 => device + 1,
        1 => device - 1,
        2 => AnyInt(),
        _ => device,
    };

    private NtStatus AnyStatus() => _random.Next(4) switch
    {
        0 => (NtStatus)_random.Next(),
        1 => (NtStatus)(-_random.Next()),
        _ => Statuses[_random.Next(Statuses.Length)],
    };

    private long AnyInformation(int outputLength) => _random.Next(6) switch
    {
        0 => -1,
        1 => outputLength + 1,
        2 => long.MaxValue,
        3 => AnyLong(),
        _ => outputLength == 0 ? 0 : _random.Next(outputLength + 1),
    };

    private byte[] AnyData(int outputLength)
    {
        var length = _random.Next(5) switch
        {
            0 => 0,
            1 => outputLength + 1 + _random.Next(64),
            _ => outputLength == 0 ? 0 : _random.Next(outputLength + 1),
        };
        var data = new byte[Math.Min(length, 1 << 16)];
        _random.NextBytes(data);
        return data;
    }

    private int AnyInt() => _random.Next(5) switch
    {
        0 => 0,
        1 => -1,
        2 => int.MaxValue,
        3 => int.MinValue,
        _ => _random.Next(-1000, 1000),
    };

    private long AnyLong() => _random.Next(5) switch
    {
        0 => 0,
        1 => -1,
        2 => long.MaxValue,
        3 => long.MinValue,
        _ => _random.NextInt64(-100_000, 100_000),
    };

    private string AnyText()
    {
        var length = _random.Next(4) == 0 ? _random.Next(10_000) : _random.Next(80);
        return string.Create(length, _random, (span, random) =>
        {
            for (var i = 0; i < span.Length; i++)
            {
                span[i] = (char)random.Next(1, 0xD7FF);
            }
        });
    }

    private byte[] Garbage()
    {
        var bytes = new byte[_random.Next(1, 64)];
        _random.NextBytes(bytes);
        return bytes;
    }
}
