"""A ``BufferedProtocol`` that reads into buffers borrowed from a pool.

Each read lands in a buffer of the pool, handed to the user's
``view_received()`` and given back once that returns, unless the user
keeps it for an incomplete frame: at once while others wait for the pool
(or in debug mode); otherwise it serves the connection's next read, or
the next connection's, and goes back by the end of the loop iteration.
When the pool runs dry, the connection is not dropped: it stops reading
and queues for a buffer, first come first served across connections (the
pool's waiters are FIFO).

The protocol's state and logic are ``Receiver``'s (_receiver.py, where the
design is described): this module joins it to ``asyncio.BufferedProtocol``.
"""

from __future__ import annotations

import asyncio

from ._receiver import ARENA_BUFFER_SIZE as ARENA_BUFFER_SIZE
from ._receiver import COMPACT_RATIO as COMPACT_RATIO
from ._receiver import FALLBACK_SIZE as FALLBACK_SIZE
from ._receiver import FLUSH_HOPS as FLUSH_HOPS
from ._receiver import HOLD_TIMEOUT as HOLD_TIMEOUT
from ._receiver import MAX_HELD_BUFFERS as MAX_HELD_BUFFERS
from ._receiver import Receiver

__all__ = ["PooledBufferedProtocol"]


class PooledBufferedProtocol(Receiver, asyncio.BufferedProtocol):
    """An ``asyncio.BufferedProtocol`` whose reads borrow ``pool``'s buffers.

    Subclass it and override ``view_received(view)``; ``pool`` is a pool of
    writable memoryviews, ``buffer_pool(size, ...)``'s. Overrides of
    ``connection_made()``, ``eof_received()`` and ``connection_lost()``
    must call ``super()``.

    ``get_buffer()`` borrows with ``pool.alloc_nowait(GFP_ATOMIC)`` (and
    ``GFP.NOWARN``: a dry pool is handled, not an error): it never awaits,
    as the callback demands, and returns a memoryview, never a bytearray
    (asyncio's TLS transport loses data read into a bytearray).
    The transport's ``sizehint`` is ignored: it is not a minimum (-1 on
    selector loops, 65536 on uvloop, anything down to 0 over TLS); every
    read gets the room left in a buffer of the pool's size.

    When the pool is dry, the few bytes already on their way are read into
    a small fallback buffer of the protocol's, reading is paused, and a task
    waits in ``await pool.alloc()``. Once it has a buffer, it copies those
    bytes to its start and resumes reading: the next read fills the rest,
    and the user sees them all in one view (or these bytes alone, two loop
    iterations later, if no read comes). Nothing is dropped, connections get
    buffers in the order they ran out, and a buffer won under overload
    carries a full read. For pauses of your own (write backpressure),
    call the protocol's ``pause_reading()`` and ``resume_reading()``, which
    compose with that wait; the transport's do not.

    A view's bytes can outlive the call four ways: copy them;
    ``keep_buffer()`` (an incomplete frame, completed by the next reads);
    ``gather(nbytes)`` (a frame of known length larger than the view: it
    arrives whole, in the pool's buffers, at ``frame_received(chain)``);
    ``take_buffer()`` (the buffer is yours, to free or hand on: to a
    ``PooledWriter``, or to a worker).

    Against slow, idle and greedy clients (see the cookbook's page):

    * ``pool`` may be a ``BufferArena``: reads go into receive buffers of
      ``buffer_size`` bytes (by default its 64 KiB class), and kept bytes of
      at most an eighth of one move into a buffer of their own size, so an
      idle incomplete frame pins what was sent, not a receive buffer.
    * ``max_held`` (by default 64 receive buffers' worth): the bytes a
      connection may hold for incomplete frames; a frame that can never
      fit is refused, ``frame_too_large()``, which closes by default.
    * ``hold_timeout`` (by default 10 s; None: never): when the pool is
      dry, connections holding an incomplete frame for longer lose it
      first: closed, oldest first, with a log line.

    Example:
        ```python
        class Echo(PooledBufferedProtocol):
            def view_received(self, view: memoryview) -> None:
                self.transport.write(bytes(view))

        pool = buffer_pool(65536, min_nr=16, max_nr=1024)
        server = await loop.create_server(lambda: Echo(pool), "127.0.0.1", 0)
        ```

    Raises:
        TypeError: ``pool`` is not a Mempool, or is one of bytearrays
            (``kmalloc_pool()``); ``get_buffer()`` raises it too (and the
            transport closes the connection) if a pool on callbacks of
            yours hands out anything but memoryviews.
    """

    transport: asyncio.Transport
    """The connection's transport, set by ``connection_made()``.

    Write replies to it (or through a ``PooledWriter``); pause and resume
    reading with the protocol's own ``pause_reading()`` and
    ``resume_reading()``, not the transport's.
    """
