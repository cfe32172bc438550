using System.Threading.Tasks.Sources;

namespace DriverIsolation.Protocol;

/// <summary>
/// The thread a ring's reader sleeps on (see <see cref="FrameConnection"/>). A reader that finds
/// the ring empty awaits <see cref="WaitAsync"/>; this thread sleeps on the ring's futex until a
/// frame is there (or the connection ends), then completes the wait synchronously, so the reader's
/// code runs on here until it waits again, which arms the same thread. A frame thus reaches its
/// handler with one wake-up of one thread, never a hop through the thread pool. If the reader
/// waits from another thread while this one is still busy running it (a handler that took so long
/// that its owner started another reader), a new sleeper thread takes over; the old one ends when
/// the handler returns.
/// </summary>
internal sealed class RingSleeper : IValueTaskSource
{
    private static readonly TimeSpan IdleLifetime = TimeSpan.FromSeconds(10);

    private readonly Action<CancellationToken> _sleep;
    private readonly Action _wake;
    private readonly string _name;
    private readonly object _gate = new();
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = false };
    private Thread? _owner;
    private bool _armed;
    private bool _busy;
    private bool _stopped;
    private CancellationToken _token;
    private CancellationTokenRegistration _registration;

    /// <param name="sleep">Returns once the reader has something to look at (a frame, the end of
    /// the connection) or the token was cancelled.</param>
    /// <param name="wake">Makes a <paramref name="sleep"/> in progress return (on cancellation).</param>
    public RingSleeper(Action<CancellationToken> sleep, Action wake, string name)
    {
        _sleep = sleep;
        _wake = wake;
        _name = name;
    }

    /// <summary>Completes when the ring may have a frame, on this sleeper's thread.</summary>
    public ValueTask WaitAsync(CancellationToken cancellationToken)
    {
        Thread? start = null;
        short version;
        lock (_gate)
        {
            _core.Reset();
            version = _core.Version;
            _armed = true;
            _token = cancellationToken;
            _registration = cancellationToken.CanBeCanceled ? cancellationToken.UnsafeRegister(static s => ((RingSleeper)s!)._wake(), this) : default;
            if (_owner == Thread.CurrentThread)
            {
                // The reader runs on this sleeper already: it sleeps again once the reader's code unwinds.
            }
            else if (_owner is not null && !_busy)
            {
                Monitor.Pulse(_gate);
            }
            else
            {
                // The owner is busy running the reader's code (a handler that took so long that a
                // new reader started), or gone: a new thread takes over, not busy yet. It has the
                // default stack: the reader's code (drivers' routines, callers' continuations) runs on it.
                start = _owner = new Thread(static s => ((RingSleeper)s!).Run()) { IsBackground = true, Name = _name };
                _busy = false;
            }
        }

        start?.UnsafeStart(this);
        return new ValueTask(this, version);
    }

    /// <summary>Lets the thread go once it has no wait to complete (the connection is closing:
    /// a wait armed now still completes, at once, as the sleep returns for a closed connection).</summary>
    public void Stop()
    {
        lock (_gate)
        {
            _stopped = true;
            Monitor.PulseAll(_gate);
        }
    }

    private void Run()
    {
        var me = Thread.CurrentThread;
        while (true)
        {
            CancellationToken token;
            lock (_gate)
            {
                while (_owner == me && !_armed)
                {
                    if (_stopped || (!Monitor.Wait(_gate, IdleLifetime) && _owner == me && !_armed))
                    {
                        _owner = null;
                        return;
                    }
                }

                if (_owner != me)
                {
                    return;
                }

                token = _token;
            }

            _sleep(token);
            CancellationTokenRegistration registration;
            lock (_gate)
            {
                if (_owner != me)
                {
                    return; // Another thread took over (and completes the wait).
                }

                _armed = false;
                _busy = true;
                registration = _registration;
                _registration = default;
            }

            registration.Dispose();
            _core.SetResult(true);
            lock (_gate)
            {
                if (_owner == me)
                {
                    _busy = false;
                }
            }
        }
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
