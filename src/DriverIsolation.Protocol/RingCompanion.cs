namespace DriverIsolation.Protocol;

/// <summary>
/// Work a ring's reader takes on while its ring is empty, instead of only spinning: the kernel's
/// NBD server hands it a connection's socket, so that a request the client sends while the reader
/// spins is taken and sent to the host by that reader, with no other thread woken for it (see
/// <see cref="FrameConnection.TryAttach"/>).
/// </summary>
public interface IRingCompanion
{
    /// <summary>Called on the reader's thread, again and again while its ring is empty and it
    /// spins, and the ring it sends on (to the peer) is at least half free. It should not wait for
    /// anything, and should send less than half that ring in one call: while it runs, the reader
    /// reads nothing. True if it did something (the reader then spins for its full time again).
    /// One that throws is detached.</summary>
    bool Poll();

    /// <summary>The reader stops calling <see cref="Poll"/> for now: it goes to sleep. Called on
    /// the reader's thread.</summary>
    void Released();

    /// <summary>The reader will not call <see cref="Poll"/> again: the connection closed or the
    /// companion was detached. Called on any thread.</summary>
    void Detached();
}
