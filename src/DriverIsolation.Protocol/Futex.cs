using System.Runtime.InteropServices;

namespace DriverIsolation.Protocol;

/// <summary>
/// Linux futexes on a word of shared memory: a thread sleeps in the kernel until the word changes
/// and someone wakes it, whichever process that is (the mapping is shared, so the futex is not
/// process-private). A ring's reader sleeps on its waiting flag this way, and the writer that
/// finds the flag set wakes it with one system call: no pipe, no poller thread, no thread pool in
/// between.
/// </summary>
internal static unsafe partial class Futex
{
    private const int OpWait = 0;
    private const int OpWake = 1;
    private const int EAgain = 11;
    private const int EIntr = 4;
    private const int ETimedOut = 110;

    private static readonly long SyscallNumber = RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 202,
        Architecture.Arm64 => 98,
        _ => 0,
    };

    /// <summary>True where futexes can be used (Linux on x64 or Arm64).</summary>
    public static bool IsSupported { get; } = OperatingSystem.IsLinux() && SyscallNumber != 0;

    /// <summary>Sleeps while <c>*word == expected</c>, until woken or <paramref name="timeout"/>
    /// passed. Returns at once if the word holds anything else. Spurious returns are allowed:
    /// the caller looks again at what it waits for.</summary>
    public static void Wait(int* word, int expected, TimeSpan timeout)
    {
        var ticks = Math.Max(0, timeout.Ticks);
        var spec = new Timespec { Seconds = ticks / TimeSpan.TicksPerSecond, Nanoseconds = ticks % TimeSpan.TicksPerSecond * 100 };
        if (Syscall(SyscallNumber, word, OpWait, expected, &spec, null, 0) < 0)
        {
            var error = Marshal.GetLastPInvokeError();
            if (error is not (EAgain or EIntr or ETimedOut))
            {
                // EFAULT after the ring was unmapped: nothing to wait on any more.
                Thread.Yield();
            }
        }
    }

    /// <summary>Wakes one thread sleeping on <paramref name="word"/> (in any process).</summary>
    public static void Wake(int* word) => Syscall(SyscallNumber, word, OpWake, 1, null, null, 0);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, int* word, int operation, int value, Timespec* timeout, int* word2, int value3);

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }
}
