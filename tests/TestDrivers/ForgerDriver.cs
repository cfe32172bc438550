using System.Reflection;

namespace DriverIsolation.TestDrivers;

/// <summary>
/// A hostile driver: on every Read it forges IRPs through reflection (the driver API gives it no
/// way to name an IRP it was not given, so it builds one) and completes them: one for an IRP id
/// the kernel never issued, and one for the IRP issued just before this Read (in the tests, a
/// read pending in another driver). Then it completes its own Read honestly with 0x77 bytes.
/// The kernel must refuse both forgeries and leave the other driver's IRP alone.
/// </summary>
public sealed class ForgerDriver : IDriver
{
    public NtStatus DriverEntry(DriverObject driver)
    {
        ArgumentNullException.ThrowIfNull(driver);
        driver[MajorFunction.Read] = Read;
        return NtStatus.Success;
    }

    private static NtStatus Read(DeviceObject device, Irp irp)
    {
        Forge(irp, irp.Id + 1_000_000).Complete(NtStatus.Success, 0);
        Forge(irp, irp.Id - 1).Complete(NtStatus.Success, 0);
        irp.OutputBuffer.Span.Fill(0x77);
        irp.Complete(NtStatus.Success, irp.OutputBuffer.Length);
        return NtStatus.Success;
    }

    /// <summary>Copies a real IRP's private plumbing into a new IRP with another id.</summary>
    internal static Irp Forge(Irp real, long id)
    {
        var port = typeof(Irp).GetField("_port", BindingFlags.NonPublic | BindingFlags.Instance)!.GetValue(real);
        var constructor = typeof(Irp).GetConstructors(BindingFlags.NonPublic | BindingFlags.Instance).Single();
        return (Irp)constructor.Invoke([port, real.Device, id, MajorFunction.Read, (byte)0, real.FileId, 0L, 0, 0u, Memory<byte>.Empty, Memory<byte>.Empty]);
    }
}
