namespace DriverIsolation.Kernel;

/// <summary>
/// Lets a host channel's reader take the caller's completion of an IRP it has just finished
/// (<see cref="KernelOptions.InlineCompletions"/>) and run it once it has let go of its locks:
/// between <see cref="Begin"/> and <see cref="End"/> on one thread, the first IRP finished there
/// is deferred to that thread instead of the pool.
/// </summary>
internal static class InlineCompletion
{
    [ThreadStatic]
    private static bool t_accepting;

    [ThreadStatic]
    private static KernelIrp? t_deferred;

    [ThreadStatic]
    private static bool t_running;

    /// <summary>True on a reader while it runs a caller's continuation (for tests and diagnostics).</summary>
    public static bool RunningOnReader => t_running;

    /// <summary>Sets the caller's result on this reader: its continuation runs here, now.</summary>
    public static void Run(KernelIrp irp)
    {
        t_running = true;
        try
        {
            irp.SetResult(irp.PendingResult);
        }
        finally
        {
            t_running = false;
        }
    }

    /// <summary>This thread handles a host's frame and will complete what it defers.</summary>
    public static void Begin()
    {
        t_accepting = true;
        t_deferred = null;
    }

    /// <summary>The frame is handled: the IRP deferred meanwhile, if any, for the caller to complete.</summary>
    public static KernelIrp? End()
    {
        t_accepting = false;
        var deferred = t_deferred;
        t_deferred = null;
        return deferred;
    }

    /// <summary>True if this thread takes the IRP's completion (one per frame).</summary>
    public static bool TryDefer(KernelIrp irp)
    {
        if (!t_accepting || t_deferred is not null)
        {
            return false;
        }

        t_deferred = irp;
        return true;
    }
}
