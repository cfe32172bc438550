using DriverIsolation.Protocol;

namespace DriverIsolation.DriverHost;

/// <summary>
/// The raw baseline for benchmarks (<c>drvhost --echo</c>): the same process image, the same pipe
/// and the same framing as a real host, but no kernel, no handshake and no IRP: each Dispatch is
/// answered at once by a Complete carrying as many bytes as it asked for. What a request costs
/// above this is the price of the kernel and the driver runtime.
/// </summary>
internal static class EchoPeer
{
    public static async Task<int> RunAsync(FrameConnection connection)
    {
        while (await connection.ReadAsync().ConfigureAwait(false) is { } message)
        {
            DispatchBody? request = message switch
            {
                ReceivedDispatch received => received.Body,
                Dispatch dispatch => ReceivedDispatch.BodyOf(dispatch),
                _ => null,
            };
            if (request is { } d)
            {
                connection.Send(new CompleteBody(d.IrpId, d.DeviceId, NtStatus.Success, d.OutputLength,
                    d.OutputLength > 0 ? new byte[d.OutputLength] : ReadOnlyMemory<byte>.Empty));
            }
        }

        return ExitCodes.KernelGone;
    }
}
