namespace DriverIsolation.Kernel;

/// <summary>
/// An application's open handle to a device (a file object). Every call is one IRP that completes
/// exactly once; a driver's failure comes back as the status, never as an exception. Cancelling
/// the token asks the driver to cancel the request; closing the handle cancels what is still
/// outstanding, then sends Cleanup and Close.
/// </summary>
/// <remarks>
/// A request's <see cref="ValueTask{TResult}"/> is the kernel's IRP itself, reused for another
/// request once its result is taken: await it once (or call <c>AsTask()</c> once to share it).
/// </remarks>
public sealed class DeviceHandle : IAsyncDisposable
{
    private readonly IoManager _io;
    private readonly FileObject _file;

    internal DeviceHandle(IoManager io, FileObject file)
    {
        _io = io;
        _file = file;
    }

    /// <summary>The device the handle leads to (after following links).</summary>
    public string DeviceName => _file.Device.Name;

    /// <summary>The name it was opened by.</summary>
    public string OpenedAs => _file.OpenedAs;

    public long FileId => _file.Id;

    public bool IsClosed => Volatile.Read(ref _file.State) != 0;

    /// <summary>Requests on this handle not completed yet.</summary>
    public int OutstandingRequests => Volatile.Read(ref _file.OutstandingCount);

    /// <summary>Reads up to <c>buffer.Length</c> bytes at <paramref name="offset"/>; Information is the count read.</summary>
    public ValueTask<IoResult> ReadAsync(Memory<byte> buffer, long offset = 0, CancellationToken cancellationToken = default) =>
        Submit(MajorFunction.Read, offset, buffer.Length, 0, ReadOnlyMemory<byte>.Empty, buffer, cancellationToken);

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>; Information is the count written.</summary>
    public ValueTask<IoResult> WriteAsync(ReadOnlyMemory<byte> data, long offset = 0, CancellationToken cancellationToken = default) =>
        Submit(MajorFunction.Write, offset, data.Length, 0, data, Memory<byte>.Empty, cancellationToken);

    /// <summary>Sends a control request; Information is the count of output bytes.</summary>
    public ValueTask<IoResult> DeviceIoControlAsync(uint ioControlCode, ReadOnlyMemory<byte> input, Memory<byte> output, CancellationToken cancellationToken = default) =>
        Submit(MajorFunction.DeviceControl, 0, input.Length, ioControlCode, input, output, cancellationToken);

    public ValueTask<IoResult> FlushAsync(CancellationToken cancellationToken = default) =>
        Submit(MajorFunction.FlushBuffers, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, cancellationToken);

    /// <summary>Asks the drivers to cancel every request outstanding on this handle (CancelIo).</summary>
    public void CancelIo() => _io.CancelOutstanding(_file);

    /// <summary>Cancels outstanding requests, then sends Cleanup and Close. Returns Close's result.</summary>
    public async Task<IoResult> CloseAsync()
    {
        if (Interlocked.Exchange(ref _file.State, 1) != 0)
        {
            return IoResult.FromStatus(NtStatus.InvalidHandle);
        }

        CancelIo();
        _file.Device.OpenFiles.TryRemove(_file.Id, out _);
        await _io.SubmitAsync(_file, MajorFunction.Cleanup, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
        return await _io.SubmitAsync(_file, MajorFunction.Close, 0, 0, 0, ReadOnlyMemory<byte>.Empty, Memory<byte>.Empty, CancellationToken.None).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (!IsClosed)
        {
            await CloseAsync().ConfigureAwait(false);
        }
    }

    private ValueTask<IoResult> Submit(MajorFunction major, long offset, int length, uint ioControlCode, ReadOnlyMemory<byte> input, Memory<byte> output,
        CancellationToken cancellationToken) =>
        IsClosed
            ? ValueTask.FromResult(IoResult.FromStatus(NtStatus.InvalidHandle))
            : _io.SubmitAsync(_file, major, offset, length, ioControlCode, input, output, cancellationToken);
}
