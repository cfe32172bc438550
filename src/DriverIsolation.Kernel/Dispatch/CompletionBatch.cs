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
/// never later than the frames already written behind the completion). Anywhere else (a
/// continuation on the thread pool, a reader with nothing queued behind), <see cref="TryDefer"/>
/// says no and the caller does the work at once.
/// </remarks>
public static class CompletionBatch
{
    [ThreadStatic]
    private static bool t_open;

    [ThreadStatic]
    private static List<Action>? t_left;

    /// <summary>
    /// True if this thread is a host's reader running a caller's continuation: it will run
    /// <paramref name="flush"/> once it has handled the frames already waiting for it. False
    /// otherwise; the caller does the work itself then.
    /// </summary>
    public static bool TryDefer(Action flush)
    {
        ArgumentNullException.ThrowIfNull(flush);
        if (!t_open)
        {
            return false;
        }

        (t_left ??= []).Add(flush);
        return true;
    }

    /// <summary>Continuations run on this thread from now may leave work to it.</summary>
    internal static void Open() => t_open = true;

    /// <summary>No more: what continuations leave from now is theirs to do.</summary>
    internal static void Close() => t_open = false;

    /// <summary>Whether work was left on this thread.</summary>
    internal static bool Pending => t_left is { Count: > 0 };

    /// <summary>Runs what was left on this thread, in the order it was left. A flush that throws
    /// does not keep the others from running; its exception is reported to <paramref name="failed"/>.</summary>
    internal static void Flush(Action<Exception> failed)
    {
        if (t_left is not { Count: > 0 } left)
        {
            return;
        }

        // A flush may itself finish work that defers (it runs outside the batch: Close first).
        var open = t_open;
        t_open = false;
        try
        {
            for (var i = 0; i < left.Count; i++)
            {
                try
                {
                    left[i]();
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
            left.Clear();
            t_open = open;
        }
    }
}
