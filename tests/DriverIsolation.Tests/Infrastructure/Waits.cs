namespace DriverIsolation.Tests;

/// <summary>Every await in a test has a bound, so a bug shows up as a failure, not a hung run.</summary>
internal static class Waits
{
    public static readonly TimeSpan Default = TimeSpan.FromSeconds(30);

    public static Task<T> Bounded<T>(this Task<T> task) => task.WaitAsync(Default);

    public static Task Bounded(this Task task) => task.WaitAsync(Default);

    /// <summary>A request's result (the kernel's IRP, taken once).</summary>
    public static Task<T> Bounded<T>(this ValueTask<T> task) => task.AsTask().WaitAsync(Default);
}
