namespace DriverIsolation.Drivers.Echo;

/// <summary>
/// The device extension: messages waiting for a reader, and readers waiting for a message. One
/// lock guards both; IRPs are completed after it is released. A pending read is cancelable, and
/// whoever takes it off the list first (a writer, Cleanup, or the cancel routine) decides, through
/// <see cref="Irp.UnmarkCancelable"/>, who completes it: exactly one of them does.
/// </summary>
internal sealed class EchoQueue
{
    private readonly Lock _gate = new();
    private readonly LinkedList<Message> _messages = new();
    private readonly LinkedList<Irp> _readers = new();

    public NtStatus Read(Irp irp)
    {
        int count;
        lock (_gate)
        {
            if (_messages.First is { } head)
            {
                count = Take(head, irp.OutputBuffer.Span);
            }
            else if (irp.MarkCancelable(OnCancel) == NtStatus.Success)
            {
                irp.MarkPending();
                _readers.AddLast(irp);
                return NtStatus.Pending;
            }
            else
            {
                count = -1; // Cancelled before it could wait.
            }
        }

        var status = count < 0 ? NtStatus.Cancelled : NtStatus.Success;
        irp.Complete(status, Math.Max(count, 0));
        return status;
    }

    public NtStatus Write(Irp irp)
    {
        var satisfied = new List<(Irp Reader, int Count)>();
        lock (_gate)
        {
            _messages.AddLast(new Message(irp.InputBuffer.ToArray()));
            while (_messages.First is { } head && _readers.First is { } waiting)
            {
                _readers.RemoveFirst();
                var reader = waiting.Value;
                if (reader.UnmarkCancelable() == NtStatus.Cancelled)
                {
                    continue; // Its cancel routine is running and completes it.
                }

                satisfied.Add((reader, Take(head, reader.OutputBuffer.Span)));
            }
        }

        foreach (var (reader, count) in satisfied)
        {
            reader.Complete(NtStatus.Success, count);
        }

        irp.Complete(NtStatus.Success, irp.InputBuffer.Length);
        return NtStatus.Success;
    }

    /// <summary>The last handle of a file object is closing: its pending reads end now.</summary>
    public NtStatus Cleanup(Irp irp)
    {
        var cancelled = new List<Irp>();
        lock (_gate)
        {
            for (var node = _readers.First; node is not null;)
            {
                var next = node.Next;
                if (node.Value.FileId == irp.FileId)
                {
                    _readers.Remove(node);
                    if (node.Value.UnmarkCancelable() == NtStatus.Success)
                    {
                        cancelled.Add(node.Value);
                    }
                }

                node = next;
            }
        }

        cancelled.ForEach(r => r.Complete(NtStatus.Cancelled));
        irp.Complete(NtStatus.Success);
        return NtStatus.Success;
    }

    private void OnCancel(Irp irp)
    {
        lock (_gate)
        {
            _readers.Remove(irp);
        }

        irp.Complete(NtStatus.Cancelled);
    }

    /// <summary>Copies the head message into a reader's buffer; what does not fit stays queued.</summary>
    private int Take(LinkedListNode<Message> head, Span<byte> destination)
    {
        var message = head.Value;
        var count = Math.Min(destination.Length, message.Data.Length - message.Offset);
        message.Data.AsSpan(message.Offset, count).CopyTo(destination);
        message.Offset += count;
        if (message.Offset == message.Data.Length)
        {
            _messages.RemoveFirst();
        }

        return count;
    }

    private sealed class Message(byte[] data)
    {
        public byte[] Data { get; } = data;

        public int Offset { get; set; }
    }
}
