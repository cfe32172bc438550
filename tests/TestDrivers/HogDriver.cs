namespace DriverIsolation.TestDrivers;

/// <summary>A driver that leaks: every Write allocates 64 MiB, touches every page, and keeps it.</summary>
public sealed class HogDriver : IDriver
{
    private const int Chunk = 64 * 1024 * 1024;
    private readonly List<byte[]> _kept = [];

    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Write] = (_, irp) =>
        {
            var chunk = GC.AllocateUninitializedArray<byte>(Chunk, pinned: true);
            for (var i = 0; i < chunk.Length; i += 4096)
            {
                chunk[i] = 1;
            }

            lock (_kept)
            {
                _kept.Add(chunk);
            }

            irp.Complete(NtStatus.Success, irp.InputBuffer.Length);
            return NtStatus.Success;
        };
        return NtStatus.Success;
    }
}
