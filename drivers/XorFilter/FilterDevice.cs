namespace DriverIsolation.Drivers.XorFilter;

/// <summary>The filter's device extension: its key and what it has filtered.</summary>
internal sealed class FilterDevice(byte key)
{
    private long _writes;
    private long _reads;

    public byte Key { get; } = key;

    public long Writes => Interlocked.Read(ref _writes);

    public long Reads => Interlocked.Read(ref _reads);

    public void CountWrite() => Interlocked.Increment(ref _writes);

    public void CountRead() => Interlocked.Increment(ref _reads);

    public void Apply(Span<byte> data)
    {
        foreach (ref var b in data)
        {
            b ^= Key;
        }
    }
}
