namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// How a device model touches memory: every access goes through the IOMMU as the device's
/// requester ID, one page at a time (a DMA that crosses pages is translated per page, as a
/// real IOMMU does). A blocked page stops the transfer there; the pages before it were done.
/// </summary>
public sealed class DmaEngine(PhysicalMemory memory, Iommu iommu)
{
    private long _bytesRead;
    private long _bytesWritten;

    public Iommu Iommu => iommu;

    public PhysicalMemory Memory => memory;

    /// <summary>Bytes devices read from memory (data going to devices).</summary>
    public long BytesRead => Interlocked.Read(ref _bytesRead);

    /// <summary>Bytes devices wrote to memory.</summary>
    public long BytesWritten => Interlocked.Read(ref _bytesWritten);

    /// <summary>The device reads memory at <paramref name="address"/> into <paramref name="destination"/>.</summary>
    public bool TryRead(RequesterId requester, ulong address, Span<byte> destination)
    {
        var done = 0;
        while (done < destination.Length)
        {
            var at = address + (ulong)done;
            var chunk = (int)Math.Min((ulong)(destination.Length - done), Iommu.PageSize - (at % Iommu.PageSize));
            if (!iommu.TryTranslate(requester, at, DmaAccess.Read, out var physical))
            {
                return false;
            }

            memory.Span(physical, chunk).CopyTo(destination[done..]);
            done += chunk;
            Interlocked.Add(ref _bytesRead, chunk);
        }

        return true;
    }

    /// <summary>The device writes <paramref name="source"/> to memory at <paramref name="address"/>.</summary>
    public bool TryWrite(RequesterId requester, ulong address, ReadOnlySpan<byte> source)
    {
        var done = 0;
        while (done < source.Length)
        {
            var at = address + (ulong)done;
            var chunk = (int)Math.Min((ulong)(source.Length - done), Iommu.PageSize - (at % Iommu.PageSize));
            if (!iommu.TryTranslate(requester, at, DmaAccess.Write, out var physical))
            {
                return false;
            }

            source.Slice(done, chunk).CopyTo(memory.Span(physical, chunk));
            done += chunk;
            Interlocked.Add(ref _bytesWritten, chunk);
        }

        return true;
    }
}
