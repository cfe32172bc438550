using System.Buffers;
using System.IO.Pipelines;
using MessagePack;

namespace DriverIsolation.Protocol;

/// <summary>
/// One framed, duplex connection over a stream (a named pipe, or an in-memory pipe in tests).
/// Receiving is pull-based: the owner's receive loop calls <see cref="ReadAsync"/>. Sending is
/// <see cref="Send"/> from any thread: frames are encoded under a lock into an output pipe that
/// never applies back-pressure, and one loop (<c>DoSendAsync</c>) drains it to the stream, so
/// concurrent senders batch into one write. <see cref="Abort"/> drops the connection now;
/// <see cref="DisposeAsync"/> drains what was sent first.
/// </summary>
public sealed class FrameConnection : IAsyncDisposable
{
    private readonly Stream _stream;
    private readonly PipeReader _input;
    private readonly Pipe _output = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));
    private readonly MessagePackSerializerOptions _readOptions;
    private readonly int _maxFrameSize;
    private readonly Lock _sendGate = new();
    private readonly ArrayBufferWriter<byte> _scratch = new(256);
    private readonly CancellationTokenSource _aborted = new();
    private readonly Task _sendLoop;
    private readonly List<(long Position, TaskCompletionSource Done)> _flushWaiters = [];
    private bool _outputCompleted;
    private long _queuedBytes;
    private long _writtenBytes;

    /// <param name="stream">The duplex stream; owned and disposed by the connection.</param>
    /// <param name="untrustedPeer">True on the kernel side: every read uses
    /// <see cref="FrameCodec.UntrustedOptions"/>.</param>
    /// <param name="maxFrameSize">Hard limit on a frame body, both directions.</param>
    public FrameConnection(Stream stream, bool untrustedPeer, int maxFrameSize = ProtocolConstants.DefaultMaxFrameSize)
    {
        _stream = stream;
        _maxFrameSize = maxFrameSize;
        _readOptions = untrustedPeer ? FrameCodec.UntrustedOptions : FrameCodec.TrustedOptions;
        _input = PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 64 * 1024, minimumReadSize: 4096, leaveOpen: true));
        _sendLoop = DoSendAsync();
    }

    /// <summary>Why the connection ended, once it has (first reason wins).</summary>
    public string? CloseReason { get; private set; }

    /// <summary>
    /// Reads the next message. Returns null when the peer closed the connection cleanly between
    /// frames. Throws <see cref="ProtocolException"/> for a malformed, oversized or truncated frame.
    /// </summary>
    public async ValueTask<Message?> ReadAsync(CancellationToken cancellationToken = default)
    {
        while (true)
        {
            ReadResult result;
            try
            {
                result = await _input.ReadAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                SetCloseReason($"read failed: {ex.Message}");
                return null;
            }

            var buffer = result.Buffer;
            try
            {
                if (FrameCodec.TryReadFrame(ref buffer, _maxFrameSize, out var body))
                {
                    var message = FrameCodec.DecodeBody(body, _readOptions);
                    _input.AdvanceTo(buffer.Start);
                    return message;
                }
            }
            catch (ProtocolException ex)
            {
                SetCloseReason(ex.Message);
                _input.AdvanceTo(result.Buffer.End);
                throw;
            }

            if (result.IsCompleted || result.IsCanceled)
            {
                var truncated = !buffer.IsEmpty;
                _input.AdvanceTo(buffer.End);
                if (truncated)
                {
                    var reason = $"Truncated frame: the peer closed the connection with {buffer.Length} bytes of an unfinished frame.";
                    SetCloseReason(reason);
                    throw new ProtocolException(reason);
                }

                SetCloseReason("peer closed the connection");
                return null;
            }

            // Not a whole frame yet: consume nothing, but say everything was examined so the
            // next read waits for more bytes.
            _input.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>Queues a message for sending. Never blocks on the peer. Returns false if the
    /// connection is closed (the message is dropped: the peer is gone).</summary>
    /// <exception cref="ProtocolException">The message exceeds the frame limit.</exception>
    public bool Send(Message message)
    {
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return false;
            }

            FrameCodec.WriteFrame(_output.Writer, message, _maxFrameSize, _scratch);
            Commit();
            return true;
        }
    }

    /// <summary>Sends a message and waits until it has been written to the stream (or the
    /// connection ended, or <paramref name="timeout"/> passed): for a message that must be out
    /// before something drastic happens to this process. False if it was not written.</summary>
    public bool SendAndWait(Message message, TimeSpan timeout)
    {
        TaskCompletionSource done;
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return false;
            }

            FrameCodec.WriteFrame(_output.Writer, message, _maxFrameSize, _scratch);
            Commit();
            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_flushWaiters)
            {
                if (Interlocked.Read(ref _writtenBytes) >= _queuedBytes)
                {
                    return true;
                }

                _flushWaiters.Add((_queuedBytes, done));
            }
        }

        try
        {
            return done.Task.Wait(timeout);
        }
        catch (AggregateException)
        {
            return false;
        }
    }

    /// <summary>Queues raw bytes, not a frame (a host's fault shim sending a malformed frame on
    /// purpose). False if the connection is closed.</summary>
    public bool SendRaw(ReadOnlySpan<byte> bytes)
    {
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return false;
            }

            _output.Writer.Write(bytes);
            Commit();
            return true;
        }
    }

    /// <summary>Hands what was written to the output pipe to the send loop (under the send lock).</summary>
    private void Commit()
    {
        _queuedBytes += _output.Writer.UnflushedBytes;

        // Without a pause threshold this completes synchronously: it only wakes DoSendAsync.
        var flush = _output.Writer.FlushAsync();
        if (!flush.IsCompleted)
        {
            flush.AsTask().GetAwaiter().GetResult();
        }
    }

    private void ReleaseFlushWaiters(bool failed)
    {
        lock (_flushWaiters)
        {
            var written = Interlocked.Read(ref _writtenBytes);
            for (var i = _flushWaiters.Count - 1; i >= 0; i--)
            {
                if (failed || _flushWaiters[i].Position <= written)
                {
                    if (failed)
                    {
                        _flushWaiters[i].Done.TrySetCanceled();
                    }
                    else
                    {
                        _flushWaiters[i].Done.TrySetResult();
                    }

                    _flushWaiters.RemoveAt(i);
                }
            }
        }
    }

    /// <summary>Drops the connection now: pending output is discarded, reads end.</summary>
    public void Abort(string reason)
    {
        SetCloseReason(reason);
        CompleteOutput();
        _aborted.Cancel();
        _input.CancelPendingRead();
        try
        {
            _stream.Dispose();
        }
        catch (IOException)
        {
            // Already broken: nothing more to release.
        }
    }

    /// <summary>Sends what was queued, then closes.</summary>
    public async ValueTask DisposeAsync()
    {
        CompleteOutput();
        try
        {
            await _sendLoop.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            _aborted.Cancel();
        }

        SetCloseReason("closed locally");
        await _input.CompleteAsync().ConfigureAwait(false);
        await _stream.DisposeAsync().ConfigureAwait(false);
        _aborted.Dispose();
    }

    private void CompleteOutput()
    {
        lock (_sendGate)
        {
            if (_outputCompleted)
            {
                return;
            }

            _outputCompleted = true;
            _output.Writer.Complete();
        }
    }

    private async Task DoSendAsync()
    {
        await Task.Yield();
        var reader = _output.Reader;
        Exception? error = null;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync(_aborted.Token).ConfigureAwait(false);
                var buffer = result.Buffer;
                foreach (var segment in buffer)
                {
                    await _stream.WriteAsync(segment, _aborted.Token).ConfigureAwait(false);
                }

                if (!buffer.IsEmpty)
                {
                    await _stream.FlushAsync(_aborted.Token).ConfigureAwait(false);
                }

                reader.AdvanceTo(buffer.End);
                if (!buffer.IsEmpty)
                {
                    Interlocked.Add(ref _writtenBytes, buffer.Length);
                    ReleaseFlushWaiters(failed: false);
                }

                if (result.IsCompleted)
                {
                    break;
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Aborted: pending output is dropped on purpose.
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            error = ex;
            SetCloseReason($"write failed: {ex.Message}");
        }
        finally
        {
            CompleteOutput();
            ReleaseFlushWaiters(failed: true);
            await reader.CompleteAsync(error).ConfigureAwait(false);
        }
    }

    private void SetCloseReason(string reason) => CloseReason ??= reason;
}
