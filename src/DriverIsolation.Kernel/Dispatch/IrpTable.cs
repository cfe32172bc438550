namespace DriverIsolation.Kernel;

/// <summary>
/// The IRPs in flight, found by id, and the outcome of recently finished ones. IRP ids are
/// issued in sequence, so an id's slot is the id modulo the table's size: looking one up is an
/// array read without a lock, and adding or removing one allocates nothing. When a new IRP's slot
/// is still held by an older IRP in flight, the table doubles, up to a limit; beyond it the older
/// IRP moves to a dictionary of long-lived ones (a driver that holds an IRP far longer than the
/// rest does not make the table grow without end). Finished IRPs are remembered the
/// same way, in a table of their own, until an id that many later finishes.
/// </summary>
internal sealed class IrpTable
{
    private readonly Lock _gate = new();
    private KernelIrp?[] _slots = new KernelIrp?[256];
    private readonly long[] _finishedIds;
    private readonly NtStatus[] _finishedStatus;
    private readonly Dictionary<long, KernelIrp> _longLived = [];
    private int _longLivedCount;
    private int _count;

    /// <summary>The table doubles up to this many slots.</summary>
    public const int MaxSlots = 1 << 16;

    /// <param name="finishedMemory">At least how many finished IRPs to remember (rounded up to a
    /// power of two).</param>
    public IrpTable(int finishedMemory)
    {
        var size = (int)Math.Min(1 << 24, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, finishedMemory)));
        _finishedIds = new long[size];
        _finishedStatus = new NtStatus[size];
    }

    /// <summary>IRPs in flight.</summary>
    public int Count => Volatile.Read(ref _count);

    public void Add(KernelIrp irp)
    {
        lock (_gate)
        {
            while (true)
            {
                var slots = _slots;
                ref var slot = ref slots[irp.Id & (slots.Length - 1)];
                if (slot is null)
                {
                    Volatile.Write(ref slot, irp);
                    _count++;
                    return;
                }

                if (slots.Length >= MaxSlots)
                {
                    _longLived[slot.Id] = slot;
                    Volatile.Write(ref _longLivedCount, _longLived.Count);
                    Volatile.Write(ref slot, null);
                    continue;
                }

                Grow();
            }
        }
    }

    public bool TryGet(long id, out KernelIrp irp)
    {
        var slots = Volatile.Read(ref _slots);
        var found = Volatile.Read(ref slots[id & (slots.Length - 1)]);
        if (found is not null && found.Id == id)
        {
            irp = found;
            return true;
        }

        if (Volatile.Read(ref _longLivedCount) > 0)
        {
            lock (_gate)
            {
                if (_longLived.TryGetValue(id, out var longLived))
                {
                    irp = longLived;
                    return true;
                }

                // It may have moved there from the slot just read.
                found = _slots[id & (_slots.Length - 1)];
                if (found is not null && found.Id == id)
                {
                    irp = found;
                    return true;
                }
            }
        }

        irp = null!;
        return false;
    }

    /// <summary>Takes the IRP out and remembers how it finished. False if the IRP had already
    /// finished once (the exactly-once invariant broken).</summary>
    public bool Finish(KernelIrp irp, NtStatus status)
    {
        lock (_gate)
        {
            var slots = _slots;
            ref var slot = ref slots[irp.Id & (slots.Length - 1)];
            if (slot == irp)
            {
                Volatile.Write(ref slot, null);
                _count--;
            }
            else if (_longLived.Remove(irp.Id))
            {
                Volatile.Write(ref _longLivedCount, _longLived.Count);
                _count--;
            }

            var index = irp.Id & (_finishedIds.Length - 1);
            if (_finishedIds[index] == irp.Id)
            {
                return false;
            }

            _finishedStatus[index] = status;
            Volatile.Write(ref _finishedIds[index], irp.Id);
            return true;
        }
    }

    /// <summary>How a recently finished IRP finished; false if it is not remembered.</summary>
    public bool TryGetFinished(long id, out NtStatus status)
    {
        lock (_gate)
        {
            var index = id & (_finishedIds.Length - 1);
            status = _finishedStatus[index];
            return id > 0 && _finishedIds[index] == id;
        }
    }

    /// <summary>The IRPs in flight now (a copy).</summary>
    public List<KernelIrp> Snapshot(Func<KernelIrp, bool>? where = null)
    {
        var list = new List<KernelIrp>();
        lock (_gate)
        {
            foreach (var irp in _slots)
            {
                if (irp is not null && (where is null || where(irp)))
                {
                    list.Add(irp);
                }
            }

            foreach (var irp in _longLived.Values)
            {
                if (where is null || where(irp))
                {
                    list.Add(irp);
                }
            }
        }

        return list;
    }

    /// <summary>Doubles the table (under the lock); readers keep using the old one until the new
    /// one is published, and it holds every IRP the old one did.</summary>
    private void Grow()
    {
        var old = _slots;
        var size = old.Length * 2;
        while (true)
        {
            var grown = new KernelIrp?[size];
            var fits = true;
            foreach (var irp in old)
            {
                if (irp is null)
                {
                    continue;
                }

                ref var slot = ref grown[irp.Id & (size - 1)];
                if (slot is not null)
                {
                    fits = false;
                    break;
                }

                slot = irp;
            }

            if (fits)
            {
                Volatile.Write(ref _slots, grown);
                return;
            }

            size *= 2;
        }
    }
}
