namespace DriverIsolation.Kernel;

/// <summary>
/// The deadlines of every IRP in flight, on one timer. IRPs are kept in one FIFO list per
/// timeout: the IRPs of a list entered it in deadline order, so its head is its earliest
/// deadline, and adding or removing an IRP is a few pointer writes (no timer, no allocation).
/// The timer is armed for the earliest deadline when one is added that is earlier than the one
/// it is armed for; an IRP that completes does not disarm it, so a timer that fires with nothing
/// expired re-arms itself for the earliest head. With a fake clock an IRP expires exactly when
/// its deadline is reached, as it did with one timer per IRP.
/// </summary>
internal sealed class DeadlineQueue : IDisposable
{
    private readonly TimeProvider _time;
    private readonly Action<KernelIrp> _expired;
    private readonly ITimer _timer;
    private readonly Lock _gate = new();
    private readonly long _oneMillisecond;
    private Bucket[] _buckets = [];
    private long _armedFor = long.MaxValue;
    private bool _disposed;

    public DeadlineQueue(TimeProvider time, Action<KernelIrp> expired)
    {
        _time = time;
        _expired = expired;
        _oneMillisecond = Math.Max(1, time.TimestampFrequency / 1000);
        _timer = time.CreateTimer(static s => ((DeadlineQueue)s!).Fire(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>IRPs waiting for their deadline.</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                var count = 0;
                foreach (var bucket in _buckets)
                {
                    count += bucket.Count;
                }

                return count;
            }
        }
    }

    /// <summary>Starts the IRP's deadline: <paramref name="timeout"/> from now. A timeout that is
    /// not positive, or infinite, never expires.</summary>
    public void Add(KernelIrp irp, TimeSpan timeout)
    {
        if (timeout <= TimeSpan.Zero || timeout == Timeout.InfiniteTimeSpan)
        {
            return;
        }

        lock (_gate)
        {
            if (_disposed || irp.DeadlineBucket is not null)
            {
                return;
            }

            // The clock is read under the lock, so every list stays in deadline order.
            var now = _time.GetTimestamp();
            var bucket = BucketFor(timeout);
            var span = (long)Math.Min(timeout.TotalSeconds * _time.TimestampFrequency, long.MaxValue / 4);
            irp.DeadlineAt = now + Math.Max(1, span);
            bucket.Append(irp);
            if (irp.DeadlineAt < _armedFor)
            {
                Arm(now, irp.DeadlineAt, minimum: 1);
            }
        }
    }

    /// <summary>The IRP finished: its deadline no longer matters. False if the deadline fired
    /// (its callback may be running on the IRP now).</summary>
    public bool Remove(KernelIrp irp)
    {
        if (Volatile.Read(ref irp.DeadlineBucket) is null)
        {
            return !irp.DeadlineFired;
        }

        lock (_gate)
        {
            ((Bucket?)irp.DeadlineBucket)?.Unlink(irp);
        }

        return !irp.DeadlineFired;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            _armedFor = long.MaxValue;
        }

        _timer.Dispose();
    }

    private void Fire()
    {
        List<KernelIrp>? expired = null;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            var now = _time.GetTimestamp();

            // A real timer may fire a little before the time it was armed for (it counts in whole
            // milliseconds): then wait at least a millisecond rather than spin on it. A timer
            // that fired on time re-arms exactly, whatever the clock.
            var early = now < _armedFor;
            var next = long.MaxValue;
            foreach (var bucket in _buckets)
            {
                while (bucket.Head is { } head && head.DeadlineAt <= now)
                {
                    head.DeadlineFired = true;
                    bucket.Unlink(head);
                    (expired ??= []).Add(head);
                }

                if (bucket.Head is { } later)
                {
                    next = Math.Min(next, later.DeadlineAt);
                }
            }

            _armedFor = long.MaxValue;
            if (next != long.MaxValue)
            {
                Arm(now, next, minimum: early ? _oneMillisecond : 1);
            }
        }

        if (expired is null)
        {
            return;
        }

        foreach (var irp in expired)
        {
            _expired(irp);
        }
    }

    /// <summary>Arms the timer for <paramref name="at"/> (under the lock). The due time is at
    /// least one tick, so a fake clock never runs the callback inside this call.</summary>
    private void Arm(long now, long at, long minimum)
    {
        _armedFor = at;
        var ticks = Math.Max(minimum, at - now);
        var due = TimeSpan.FromTicks((long)Math.Min((double)ticks * TimeSpan.TicksPerSecond / _time.TimestampFrequency + 0.999, TimeSpan.MaxValue.Ticks / 2));
        _timer.Change(due < TimeSpan.FromTicks(1) ? TimeSpan.FromTicks(1) : due, Timeout.InfiniteTimeSpan);
    }

    private Bucket BucketFor(TimeSpan timeout)
    {
        foreach (var existing in _buckets)
        {
            if (existing.Timeout == timeout)
            {
                return existing;
            }
        }

        var bucket = new Bucket(timeout);
        _buckets = [.. _buckets, bucket];
        return bucket;
    }

    /// <summary>The IRPs of one timeout, earliest deadline first (intrusive doubly-linked list).</summary>
    private sealed class Bucket(TimeSpan timeout)
    {
        public TimeSpan Timeout { get; } = timeout;

        public KernelIrp? Head { get; private set; }

        public int Count { get; private set; }

        private KernelIrp? _tail;

        public void Append(KernelIrp irp)
        {
            irp.DeadlineBucket = this;
            irp.DeadlinePrevious = _tail;
            irp.DeadlineNext = null;
            if (_tail is null)
            {
                Head = irp;
            }
            else
            {
                _tail.DeadlineNext = irp;
            }

            _tail = irp;
            Count++;
        }

        public void Unlink(KernelIrp irp)
        {
            if (irp.DeadlineBucket != this)
            {
                return;
            }

            if (irp.DeadlinePrevious is null)
            {
                Head = irp.DeadlineNext;
            }
            else
            {
                irp.DeadlinePrevious.DeadlineNext = irp.DeadlineNext;
            }

            if (irp.DeadlineNext is null)
            {
                _tail = irp.DeadlinePrevious;
            }
            else
            {
                irp.DeadlineNext.DeadlinePrevious = irp.DeadlinePrevious;
            }

            irp.DeadlineNext = irp.DeadlinePrevious = null;
            Volatile.Write(ref irp.DeadlineBucket, null);
            Count--;
        }
    }
}
