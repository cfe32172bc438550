namespace DriverIsolation;

/// <summary>What a device may do to a DMA mapping (I/O page-table permission bits): read it
/// (data going to the device) and/or write it (data coming from the device).</summary>
[Flags]
public enum DmaAccess
{
    None = 0,
    Read = 1,
    Write = 2,
    ReadWrite = Read | Write,
}
