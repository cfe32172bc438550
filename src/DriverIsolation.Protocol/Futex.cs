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
    /// the caller looks again at what it waits for. False if the word did not hold
    /// <paramref name="expected"/> (nothing slept).</summary>
    public static bool Wait(int* word, int expected, TimeSpan timeout)
    {
        var ticks = Math.Max(0, timeout.Ticks);
        var spec = new Timespec { Seconds = ticks / TimeSpan.TicksPerSecond, Nanoseconds = ticks % TimeSpan.TicksPerSecond * 100 };
        if (Syscall(SyscallNumber, word, OpWait, expected, &spec, null, 0) < 0)
        {
            var error = Marshal.GetLastPInvokeError();
            if (error is EAgain)
            {
                return false;
            }

            if (error is not (EIntr or ETimedOut))
            {
                // EFAULT (the ring was unmapped meanwhile) or a futex this system refuses: sleep
                // a little instead, so a caller that loops does not spin.
                Thread.Sleep(1);
            }
        }

        return true;
    }

    /// <summary>Wakes every thread sleeping on <paramref name="word"/> (in any process): the one
    /// reader there is, and whatever a hostile peer may have put to sleep on the same word, which
    /// must not take the reader's wake-up.</summary>
    public static void Wake(int* word) => Syscall(SyscallNumber, word, OpWake, int.MaxValue, null, null, 0);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, int* word, int operation, int value, Timespec* timeout, int* word2, int value3);

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }
}
