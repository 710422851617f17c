# A flush with nothing to send returns at once (run once at start-up; see kernel/helper.rs).
#
# ipykernel's OutStream.flush hands a flush to its IO thread and waits for it, even when nothing
# was written: a round trip between two threads (a message to wake the IO thread, the GIL passed
# twice). The kernel flushes stdout and stderr three times a cell (after the display hook, before
# the reply, after the idle status), which cost about 1.2 ms of a 4.2 ms `1+1` here (measured;
# docs/benchmarks.md). With this, a stream with no text buffered and no flush scheduled is not
# flushed; one with text is flushed as before.
#
# What the skipped wait ordered: a stream's text and any output already handed to the IO thread
# went out on IOPub before the shell reply. Text buffered is still flushed and waited for; other
# output (results, displays) may now reach a client after the reply, which the Jupyter protocol
# allows (no order across channels): the idle status still comes after all of it on IOPub, and
# Middleman, like Jupyter's own clients, ends an execution on the reply and the idle status both.
# A kernel whose OutStream lacks what is read here (another ipykernel) keeps its own flush.
def _install():
    try:
        from ipykernel.iostream import OutStream
    except ImportError:
        return
    probe = ("_flush_pending", "_subprocess_flush_pending", "_buffers", "_buffer_lock")
    if getattr(OutStream.flush, "_nbplat", False) or not all(
        name in OutStream.__init__.__code__.co_names for name in probe
    ):
        return
    flush = OutStream.flush

    def flush_if_written(self):
        if not (self._flush_pending or self._subprocess_flush_pending):
            with self._buffer_lock:
                empty = all(buffer.tell() == 0 for buffer in self._buffers.values())
            if empty:
                return
        flush(self)

    flush_if_written._nbplat = True
    flush_if_written.__doc__ = flush.__doc__
    OutStream.flush = flush_if_written


_install()
del _install
