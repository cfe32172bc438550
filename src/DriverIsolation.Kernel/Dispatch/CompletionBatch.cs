namespace DriverIsolation.Kernel;

/// <summary>
/// Lets a caller's continuation that runs on a host's reader (<see cref="KernelOptions.InlineCompletions"/>)
/// leave part of its work until that reader has no more of the host's frames waiting: an NBD
/// connection's replies finished in one burst of completions then go out in one send, and its
/// client is woken once for them, not once for each.
/// </summary>
/// <remarks>
/// A reader flushes what was left to it before it waits for the host's next frame, and when it
/// ends; it leaves the work only while it knows the next frame is already there (so a flush is
/// never later than the frames already written behind the completion). A reader that a
/// continuation holds past the stall time is handed off: what was left to it is then run on the
/// thread pool at once, not when the continuation lets go. Anywhere else (a continuation on the
/// thread pool), <see cref="TryDefer"/> says no and the caller does the work at once.
/// </remarks>
public sealed class CompletionBatch
{
    [ThreadStatic]
    private static CompletionBatch? t_current;

    private readonly Lock _gate = new();
    private List<Action> _left = [];
    private List<Action>? _spare = [];

    /// <summary>
    /// True if this thread is a host's reader running a caller's continuation: the reader will
    /// run <paramref name="flush"/> once it has handled the frames already waiting for it. False
    /// otherwise; the caller does the work itself then.
    /// </summary>
    public static bool TryDefer(Action flush)
    {
        ArgumentNullException.ThrowIfNull(flush);
        if (t_current is not { } batch)
        {
            return false;
        }

        lock (batch._gate)
        {
            batch._left.Add(flush);
        }

        return true;
    }

    /// <summary>Continuations run on this thread from now leave their work to this batch.</summary>
    internal void Enter() => t_current = this;

    /// <summary>No more: what continuations on this thread leave from now is theirs to do.</summary>
    internal static void Leave() => t_current = null;

    /// <summary>Whether work was left and not run yet. Read without the lock, once per frame: only
    /// the reader itself adds to its batch until it is handed off, and a reader that sees false
    /// wrongly still flushes when it ends.</summary>
    internal bool Pending => Volatile.Read(ref _left).Count > 0;

    /// <summary>Runs what was left so far, in the order it was left, each once (whichever thread
    /// flushes takes it). A flush that throws does not keep the others from running; its
    /// exception goes to <paramref name="failed"/>.</summary>
    internal void Flush(Action<Exception> failed)
    {
        List<Action> run;
        lock (_gate)
        {
            if (_left.Count == 0)
            {
                return;
            }

            run = _left;
            _left = _spare ?? [];
            _spare = null;
        }

        // Work finished during a flush is done there and then (outside any batch).
        var outer = t_current;
        t_current = null;
        try
        {
            foreach (var flush in run)
            {
                try
                {
                    flush();
                }
#pragma warning disable CA1031 // One caller's failed flush must not lose the others', nor the reader.
                catch (Exception ex)
#pragma warning restore CA1031
                {
                    failed(ex);
                }
            }
        }
        finally
        {
            t_current = outer;
            run.Clear();
            lock (_gate)
            {
                _spare ??= run;
            }
        }
    }
}
