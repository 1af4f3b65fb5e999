"""The state and the logic of ``PooledBufferedProtocol`` (protocol.py).

``Receiver`` is the protocol but for its base: an extension type in the
compiled build, which cannot derive from ``asyncio.BufferedProtocol`` (a
Python class), so the protocol derives from both (``BufferedProtocol``
has no fields: the layouts agree). Its methods are the protocol's, and
documented there.

What a read does with its buffer, and what a dry pool does to the
connection, is the first paragraph of protocol.py's docstring.

How the transports call us, which the design leans on:

* ``get_buffer()`` may be called without ``buffer_updated()`` following:
  the selector transport on EAGAIN or EOF, uvloop when libuv reads nothing,
  the TLS transport whenever a record is incomplete. So the buffer stays in
  ``_buf`` and the next ``get_buffer()`` hands out the same space again.
* asyncio's selector transport, uvloop and both TLS transports call
  ``get_buffer()`` only while reading is not paused; reading is paused from
  ``buffer_updated()``, never from ``get_buffer()`` (libuv calls the read
  callback right after the allocation callback that would have stopped it).
* uvloop exports the result of ``get_buffer()`` until ``buffer_updated()``
  returns: a buffer freed in there is fine for the pool; in debug mode the
  pool quarantines the exported view and takes it back once it is released.
* libuv reads until EAGAIN: after every read uvloop asks for a buffer
  again, and the try mostly finds nothing. So a read that kept nothing
  leaves its buffer fresh for that try, and the next get_buffer() of
  another protocol takes it straight: one buffer serves a stream of reads
  of many connections, with no allocation or free per read. Only while
  the pool is steady (its gate down: nobody waits, no debug mode), when
  giving it back and taking it again would yield the same buffer;
  otherwise it goes back at once, to the waiters first.

Ownership, kept by every method below: a buffer of the pool is held by
exactly one of ``_buf`` (lent to the transport between ``get_buffer()`` and
``buffer_updated()``, to the user during ``view_received()``, kept by the
user after ``keep_buffer()``), ``_full`` (kept buffers with no room left) or
the waiter task (from ``pool.alloc()`` returning to its storing the buffer
in ``_buf``, with no await in between); or, after ``take_buffer()``, by the
user alone. ``connection_lost()`` gives back all the protocol holds.

Reading is paused while either reason holds, and resumed only once neither
does: the user's (``pause_reading()``, ``_paused``) and the pool's (a task
waits for a buffer, ``_waiter``). The transports' own calls do not nest, so
the user must pause through the protocol.

Bytes in ``_buf`` that ``view_received()`` has not seen (``_unseen``; they
are ``_buf[_unseen_at:_fill]``, after any kept bytes): those of a dry pool's
wait, until the next read or ``_flush()``; those read while the user
pauses, until ``resume_reading()``. The end of the stream delivers them in
any case, and ``release_kept()`` drops the kept bytes before them, not them.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import cast

from ._ratelimit import RateLimitedWarning
from .arena import BufferArena
from .chain import BufferChain
from .gfp import ATOMIC_NOWARN, GFP, GFP_KERNEL, NOWAIT_NOWARN
from .mempool import Mempool
from .pools import SlabPool, TrackedPool

__all__ = ["Receiver"]

_NOT_VIEWS = (
    "{pool!r} hands out {kind}: PooledBufferedProtocol needs a pool of "
    "writable memoryviews, such as buffer_pool()'s (asyncio's TLS transport "
    "loses data read into a bytearray)"
)

#: Bytes of the per-protocol fallback buffer, read into when the pool is dry.
FALLBACK_SIZE = 256
#: An arena's receive buffers, unless ``buffer_size`` says: the class of
#: this many bytes (or the largest class, if smaller).
ARENA_BUFFER_SIZE = 65536
#: Kept bytes up to ``1 / COMPACT_RATIO`` of a receive buffer move into a
#: buffer of their own size of the arena (an incomplete frame does not pin
#: a whole receive buffer); more stay where they are (moving them at every
#: read would cost more than they pin: at most this many times their size).
COMPACT_RATIO = 8
#: The default quota, ``max_held``: bytes held for incomplete frames (kept,
#: or gathered), in receive buffers' worth.
MAX_HELD_BUFFERS = 64
#: The default ``hold_timeout``, in seconds: see the class docstring.
HOLD_TIMEOUT = 10.0
# What a frame's next buffer is awaited with: urgent (see _alloc_nowait()).
KERNEL_HIGH = GFP_KERNEL | GFP.HIGH
#: Loop iterations after resuming reading before bytes read while the pool
#: was dry are delivered without more (two: on the selector loops and on
#: uvloop, the read that resuming allows runs within them).
FLUSH_HOPS = 2
# get_buffer()'s mask is ATOMIC_NOWARN: the headroom, and no warning for a
# dry pool, which the protocol handles by waiting (the kernel's callers
# with a fallback pass __GFP_NOWARN too).


class Receiver:
    """``PooledBufferedProtocol`` but for its base, ``asyncio.BufferedProtocol``
    (see the module's docstring): what the protocol's docstring says."""

    __slots__ = (
        "_arena",
        "_buf",
        "_chain",
        "_end",
        "_fallback",
        "_fill",
        "_frame_left",
        "_fresh",
        "_full",
        "_gather_at",
        "_holders",
        "_is_holding",
        "_keep",
        "_lost",
        "_mempool",
        "_paused",
        "_pending",
        "_small",
        "_sweeper",
        "_taken",
        "_tick",
        "_unseen",
        "_unseen_at",
        "_waiter",
        "buffer_size",
        "hold_timeout",
        "max_held",
        "pool",
        "transport",
    )

    # Set by connection_made(); documented in PooledBufferedProtocol.
    transport: asyncio.Transport

    # The state, field by field (ownership: see the module's docstring):
    #   _buf        the buffer reads go into (lent to the transport, then
    #               to view_received(), or kept), or None
    #   _fill       kept (or unseen) bytes at the start of _buf
    #   _full       buffers kept with no room left, until release_kept()
    #   _keep       keep_buffer()'s start, during view_received() only
    #   _end        len(view) during view_received(), else None
    #   _taken      take_buffer() was called in this view_received()
    #   _fresh      _buf came from get_buffer(), or stayed after a read
    #               that kept nothing, and no read filled it yet
    #   _sweeper    the loop's _Sweeper, which gives fresh buffers back
    #   _fallback   the small buffer read into while the pool is dry
    #   _pending    bytes read into _fallback, not yet in a pool buffer
    #   _waiter     the task waiting for a buffer of a dry pool, or None
    #   _unseen     _buf[_unseen_at:_fill] not yet seen by view_received()
    #   _paused     the user's pause_reading() holds
    #   _lost       connection_lost() was called

    def __init__(
        self,
        pool: Mempool[memoryview] | BufferArena,
        *,
        buffer_size: int | None = None,
        max_held: int | None = None,
        hold_timeout: float | None = HOLD_TIMEOUT,
    ) -> None:
        if isinstance(pool, BufferArena):
            size = ARENA_BUFFER_SIZE if buffer_size is None else buffer_size
            size = pool.good_size(min(size, pool.classes[-1]))
        elif isinstance(pool, Mempool):
            if isinstance(pool, TrackedPool) and not isinstance(pool, SlabPool):
                raise TypeError(_NOT_VIEWS.format(pool=pool, kind="bytearrays"))
            if buffer_size is not None:
                raise TypeError(
                    "buffer_size is for an arena: a pool's buffers have its size"
                )
            cache = getattr(pool, "_allocator", None)
            size = getattr(cache, "object_size", ARENA_BUFFER_SIZE)
        else:
            raise TypeError(
                f"pool must be a Mempool or a BufferArena, not {type(pool).__name__}"
            )
        if max_held is None:
            max_held = MAX_HELD_BUFFERS * size
        elif type(max_held) is not int or max_held < 1:
            raise ValueError(f"max_held must be an int >= 1 bytes, got {max_held!r}")
        if hold_timeout is not None and not hold_timeout > 0:
            raise ValueError(f"hold_timeout must be > 0 seconds, got {hold_timeout}")
        self.pool = pool
        """The pool (or arena) the protocol's buffers are borrowed from."""
        self._arena = pool if isinstance(pool, BufferArena) else None
        self._mempool = None if isinstance(pool, BufferArena) else pool
        #: Bytes of each receive buffer.
        self.buffer_size = size
        #: The quota: bytes held for incomplete frames, past which a frame
        #: is refused (``frame_too_large()``).
        self.max_held = max_held
        #: Seconds an incomplete frame may hold buffers while the pool is
        #: dry and others wait, before the connection is closed (None:
        #: never).
        self.hold_timeout = hold_timeout
        # An incomplete frame compacted into a buffer of its size (arena
        # only): _buf is None then, and get_buffer() moves it back.
        self._small: memoryview | None = None
        # A frame being gathered: the buffers full of it, and the bytes of
        # it still to come beyond those and _buf[:_fill].
        self._chain: BufferChain | None = None
        self._frame_left = 0
        self._gather_at: int | None = None  # gather()'s start, in the call
        # The pool's holders (see _holding()), and whether this is one.
        self._holders = _holders(pool)
        self._is_holding = False
        self._tick: asyncio.TimerHandle | None = None  # _evict_tick()'s
        self._buf: memoryview | None = None  # the buffer reads go into
        self._fill = 0  # kept bytes at the start of _buf
        self._full: list[memoryview] = []  # kept, no room left in them
        self._keep: int | None = None  # set by keep_buffer() in view_received()
        self._end: int | None = None  # len(view) during view_received()
        self._fallback: memoryview | None = None
        self._pending = bytearray()  # read into the fallback, not yet delivered
        self._waiter: asyncio.Task[None] | None = None
        self._lost = False
        # A buffer get_buffer() took from the pool, or that a read which
        # kept nothing left for the next (see _settle()), and no read has
        # filled yet; _sweep() gives it back if none does, and the next
        # get_buffer() of another protocol may take it (_take_fresh()).
        self._fresh = False
        self._sweeper: _Sweeper | None = None  # set by connection_made()
        self._paused = False  # by pause_reading()
        self._taken = False  # take_buffer() in this view_received()
        # _buf[_unseen_at:_fill] is not seen by view_received() yet: read
        # while the pool was dry (see _wait()), or while paused.
        self._unseen = False
        self._unseen_at = 0

    def __repr__(self) -> str:
        buf = self._buf
        state = f" kept={self._fill}/{len(buf)}" if buf is not None else ""
        state += f" small={len(self._small)}" if self._small is not None else ""
        state += f" gathering={self._frame_left}" if self._chain is not None else ""
        state += f" full={len(self._full)}" if self._full else ""
        state += f" waiting pending={len(self._pending)}" if self._waiter else ""
        return f"<{type(self).__name__}{state}{' lost' if self._lost else ''}>"

    # -- what the user overrides and calls ---------------------------------

    def view_received(self, view: memoryview) -> None:
        """Called with the bytes received, in a buffer lent by the pool.

        ``view`` holds the bytes kept by the last ``keep_buffer()`` if any,
        followed by those just received. It is valid only until this method
        returns (it is released then, and the buffer goes back to the pool,
        unless ``keep_buffer()`` or ``take_buffer()`` was called). Must not
        await: it is called from ``buffer_updated()`` or ``eof_received()``,
        from the task that waited for a buffer, or from a callback of the
        loop's (bytes held while paused, or while the pool was dry).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override view_received(view)"
        )

    def keep_buffer(self, start: int = 0) -> None:
        """Keep ``view[start:]`` of the current ``view_received()`` call.

        For an incomplete frame, to be completed by the next reads. Call it
        from ``view_received()`` only. The kept bytes are moved to the start
        of the buffer (a copy only if ``start > 0``) and come first in the
        next ``view_received()`` view; reads go on into the room left after
        them. A buffer kept full has no room left: it stays
        with you, reads go into a new buffer and the next view starts
        afresh; give it back with ``release_kept()``.

        Raises:
            RuntimeError: called outside ``view_received()``, or after
                ``take_buffer()`` in the same call.
            ValueError: ``start`` is not within the view.
        """
        end = self._end
        if end is None:
            raise RuntimeError("keep_buffer() must be called from view_received()")
        if self._taken:
            raise RuntimeError("keep_buffer() after take_buffer(): the buffer is yours")
        if self._gather_at is not None:
            raise RuntimeError("keep_buffer() after gather() in the same call")
        if type(start) is not int or not 0 <= start <= end:
            raise ValueError(f"start must be an int from 0 to {end}, got {start!r}")
        self._keep = start

    def gather(self, nbytes: int, start: int = 0) -> None:
        """The bytes from ``view[start:]`` of the current
        ``view_received()`` call begin a frame of ``nbytes`` bytes that
        does not end in this view: gather it whole, in the pool's buffers.

        The protocol reads on into buffers of the pool (filling each, no
        copy) until the frame is complete, then calls
        ``frame_received(chain)`` with a ``BufferChain`` of exactly
        ``nbytes`` bytes; bytes after the frame go to ``view_received()``
        as usual. A frame above the quota (``max_held``) is refused at
        once: ``frame_too_large()``.

        Raises:
            RuntimeError: called outside ``view_received()``, or with
                ``keep_buffer()`` or ``take_buffer()`` in the same call.
            ValueError: ``start`` is not within the view, or the frame
                ends within it (slice it instead).
        """
        end = self._end
        if end is None:
            raise RuntimeError("gather() must be called from view_received()")
        if self._taken or self._keep is not None:
            raise RuntimeError("gather() with keep_buffer() or take_buffer()")
        if type(start) is not int or not 0 <= start <= end:
            raise ValueError(f"start must be an int from 0 to {end}, got {start!r}")
        if type(nbytes) is not int or nbytes <= end - start:
            raise ValueError(
                f"nbytes must be an int above the {end - start} bytes of the "
                f"frame in this view, got {nbytes!r} (a frame within the view "
                "is a slice of it)"
            )
        if nbytes > self.max_held:
            self._gather_at = None
            self._refuse(nbytes)
            return
        self._gather_at = start
        self._frame_left = nbytes - (end - start)

    @property
    def frame_left(self) -> int:
        """Bytes of the frame being gathered (``gather()``) not received
        yet; 0 when no frame is being gathered. It falls as the frame's
        bytes come in, so a timer can tell a frame that stalls from one
        that is slow."""
        if self._chain is None and self._gather_at is None:
            return 0
        return self._frame_left

    def frame_received(self, chain: BufferChain) -> None:
        """Called with a frame ``gather()`` asked for, whole.

        The chain is yours: give its buffers back with ``chain.free()``, or
        hand it on (``PooledWriter.write(chain)`` frees each buffer once
        sent). Must not await.
        """
        chain.free()
        raise NotImplementedError(
            f"{type(self).__name__} must override frame_received(chain) to use gather()"
        )

    def frame_too_large(self, nbytes: int) -> None:
        """Called when a frame can never fit the quota: ``gather(nbytes)``
        above ``max_held``, or kept bytes past it.

        By default the connection is closed (with a log line): a frame that
        would hold more than the quota is refused, never left to hoard.
        Override it to write an error reply first; the protocol drops what
        it holds of the frame either way.
        """
        _LOG.warn(
            "%r: a frame of %d bytes is over the quota (max_held=%d): closing",
            self,
            nbytes,
            self.max_held,
        )
        self.transport.close()

    def take_buffer(self) -> memoryview:
        """Take the buffer of the current ``view_received()`` call.

        It is yours from now on, and the protocol reads on into another.
        Returns the pool's buffer whole, as allocated; the view's bytes are
        at its start, ``buf[:len(view)]``. Give it back with
        ``pool.free(buf)``, or hand it on: ``PooledWriter.write(buf,
        len(view))`` frees it once the bytes are sent, and a queue to a
        worker carries it without a copy.

        Raises:
            RuntimeError: called outside ``view_received()``, or after
                ``keep_buffer()`` in the same call.
        """
        if self._end is None:
            raise RuntimeError("take_buffer() must be called from view_received()")
        if self._keep is not None:
            raise RuntimeError("take_buffer() after keep_buffer() in the same call")
        if self._gather_at is not None:
            raise RuntimeError("take_buffer() after gather() in the same call")
        buf = self._buf
        assert buf is not None  # _deliver() is running
        self._taken = True
        return buf

    def pause_reading(self) -> None:
        """Stop reading from the transport until ``resume_reading()``.

        For a reason of yours: a peer that reads its replies too slowly
        (call it from ``pause_writing()``).

        Call these two rather than the transport's: the protocol pauses
        reading as well while it waits for a buffer of a dry pool, and
        resumes only once neither reason holds.

        While paused, ``view_received()`` is not called: bytes the transport
        reads all the same (uvloop reads once after a ``pause_reading()`` in
        ``connection_made()``; asyncio's loops do not) wait in the buffer,
        and ``resume_reading()`` delivers them first. Only a read that would
        fill the buffer, or the end of the stream, is delivered at once.
        """
        self._paused = True
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Undo ``pause_reading()``.

        Reading resumes, unless the protocol still waits for a buffer (it
        resumes reading once it has one). Bytes read while paused are
        delivered first, from a callback soon after (not from within this
        call).
        """
        self._paused = False
        if self._unseen:
            asyncio.get_running_loop().call_soon(self._resume_held)
        elif (
            self._waiter is None and not self._lost and not self.transport.is_closing()
        ):
            self.transport.resume_reading()

    def release_kept(self) -> None:
        """Give back every buffer kept by ``keep_buffer()``.

        The kept bytes are dropped (not bytes received since, held while
        paused: those are delivered still). In ``view_received()``, it
        undoes ``keep_buffer()`` too. Never awaits.
        """
        self._keep = None
        self._free_full()
        self._drop_small()
        if self._end is not None:
            return
        buf = self._buf
        if not self._unseen or buf is None:
            self._drop_buf()
        elif self._unseen_at:
            # Bytes not delivered yet follow the kept ones: they stay.
            at, fill = self._unseen_at, self._fill
            buf[: fill - at] = buf[at:fill]  # memmove, overlap-safe
            self._fill = fill - at
            self._unseen_at = 0

    # -- asyncio.BufferedProtocol -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport."""
        self.transport = cast(asyncio.Transport, transport)
        self._sweeper = _sweeper(asyncio.get_running_loop())

    def get_buffer(self, sizehint: int) -> memoryview:
        """The room left in this connection's buffer; ``sizehint`` ignored."""
        buf = self._buf
        if buf is not None:
            fill = self._fill
            return buf[fill:] if fill else buf
        # No barging: while this connection waits, it reads no more.
        sweeper = self._sweeper
        if sweeper is None:  # get_buffer() before connection_made()
            sweeper = self._sweeper = _sweeper(asyncio.get_running_loop())
        if self._waiter is None:
            # The read of the last get_buffer() is over (a transport reads
            # into its buffer before it asks again): if nothing filled that
            # buffer, it is taken straight (_take_fresh()), or goes back
            # first and is the one allocated now. So a storm of connections
            # ending at once costs one buffer, not one each, and the pool
            # does not grow for bytes that never come.
            last = sweeper.last
            if last is not None and last._fresh:
                buf = self._take_fresh(last)
                if buf is None:
                    sweeper.sweep_last(last)
                else:
                    sweeper.handed_on()
            if buf is None:
                buf = self._alloc_nowait()
        if buf is None:
            self._evict_stale()
            # Reading is paused from buffer_updated(), where these bytes
            # land: the transports read no more until resume_reading().
            if self._fallback is None:
                self._fallback = memoryview(bytearray(FALLBACK_SIZE))
            return self._fallback
        if type(buf) is not memoryview:  # a pool on callbacks of the user's
            self._give(buf)
            raise TypeError(_NOT_VIEWS.format(pool=self.pool, kind=type(buf).__name__))
        self._install(buf)
        # uvloop (libuv reads until EAGAIN, asking for a buffer before each
        # try), the selector transport at EOF or on an error, and the TLS
        # transports call get_buffer() when no bytes may come: an idle or
        # closing connection would then hold a buffer of the pool. Unless a
        # read fills it first, the buffer goes back at the next
        # get_buffer() of any connection of this loop, or once the loop's
        # current callbacks are over, whichever comes first.
        self._fresh = True
        sweeper.add(self)
        fill = self._fill
        return buf[fill:] if fill else buf

    def buffer_updated(self, nbytes: int) -> None:
        """Hand the bytes read to ``view_received()``.

        Bytes read into the fallback buffer (the pool was dry) are saved
        instead, and the protocol queues for a pool buffer.
        """
        self._fresh = False
        buf = self._buf
        if buf is not None:
            if self._chain is not None:
                self._gathered(nbytes)
                return
            if self._paused and self._fill + nbytes < len(buf) and not self._lost:
                # Read although paused (uvloop, right after connection_made()):
                # held, unseen, until resume_reading(). Paused again, for a
                # transport that started reading over the pause.
                if not self._unseen:
                    self._unseen = True
                    self._unseen_at = self._fill
                self._fill += nbytes
                self.transport.pause_reading()
                return
            self._deliver(nbytes)
            return
        assert self._fallback is not None  # get_buffer() returned it
        self._pending += self._fallback[:nbytes]
        if self._waiter is None and not self._lost:
            self.transport.pause_reading()
            self._waiter = asyncio.get_running_loop().create_task(self._wait())

    def eof_received(self) -> bool | None:
        """Deliver the bytes not delivered yet, before the end of the stream.

        Those are bytes read while the pool was dry, or while paused; they
        are delivered paused or not. Overrides must call
        ``super().eof_received()`` first.
        """
        if self._unseen and not self._lost:
            self._deliver(0)
        self._sweep()  # the buffer asked for this EOF's read: back now
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Give back every buffer held; cancel the wait for one."""
        self._lost = True
        self._pending.clear()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            # Cancelled in pool.alloc(), it gives back what it was handed;
            # done with alloc(), it stored its buffer in _buf, freed below.
            waiter.cancel()
        self._keep = None
        self._gather_at = None
        self._free_full()
        self._drop_small()
        chain, self._chain = self._chain, None
        if chain is not None:
            chain.free()
        self._drop_buf()
        self._not_holding()

    # -- internals ------------------------------------------------------------

    def _deliver(self, nbytes: int) -> None:
        """``view_received()`` of the kept and new bytes of ``_buf``; then
        the buffer goes back to the pool unless the user kept it."""
        buf = self._buf
        assert buf is not None
        end = self._fill + nbytes
        view = buf[:end]
        self._keep = None
        self._gather_at = None
        self._end = end
        self._unseen = False
        try:
            self.view_received(view)
        finally:
            self._end = None
            self._settle(buf, view, end)

    def _settle(self, buf: memoryview, view: memoryview, end: int) -> None:
        """After ``view_received()`` of ``view`` (``buf[:end]``): the buffer
        goes back, or is kept (compacted, if the arena can), or starts a
        frame to gather; the quota is checked."""
        keep = self._keep
        taken = self._taken
        gather_at, self._gather_at = self._gather_at, None
        if gather_at is not None and not self._lost:
            # The frame's first bytes move to the start of the buffer, the
            # chain's first link, and reads go on after them.
            self._keep = None
            if gather_at:
                buf[: end - gather_at] = buf[gather_at:end]
            self._fill = end - gather_at
            self._chain = BufferChain(self.pool)
            self._holding()
            if self._fill == len(buf):
                self._link_full()
            return
        if taken or keep is None or keep >= end:
            # The user's view dies first, so that debug mode can take the
            # buffer back now unless the user exported it.
            # Not contextlib.suppress(): this runs on every read.
            released = True
            try:
                view.release()
            except BufferError:
                released = False
            self._fill = 0
            if taken:
                self._buf = None
                self._taken = False  # the user's now, to free or hand on
            elif released and self._reusable():
                # The next read goes into it (uvloop asks for a buffer
                # again at once, and reads until EAGAIN): fresh, as if
                # get_buffer() had just taken it, so the sweep gives it
                # back if no read comes, by the end of the loop iteration.
                self._fresh = True
                sweeper = self._sweeper
                assert sweeper is not None  # _reusable() says so
                sweeper.add(self)
            else:
                self._buf = None
                self._give(buf)
        else:
            self._keep = None
            if keep == 0 and end == len(buf):
                # Kept full: it stays the user's, reads go on elsewhere.
                self._full.append(buf)
                self._buf = None
                self._fill = 0
            else:
                if keep:
                    buf[: end - keep] = buf[keep:end]  # memmove, overlap-safe
                self._fill = end - keep
                self._compact()
            held = self._held()
            if held > self.max_held:
                self.release_kept()
                self._refuse(held)
                return
        if self._fill or self._full or self._small is not None:
            self._holding()
        else:
            self._not_holding()

    def _sweep(self) -> None:
        """Give back a buffer that get_buffer() took and no read filled
        (kept bytes moved into it go back to a buffer of their size)."""
        if self._fresh and self._buf is not None and not self._unseen:
            self._fresh = False
            if self._fill == 0:
                self._drop_buf()
            elif self._chain is None:
                self._compact()

    # -- buffers: allocation, compaction, gathering ------------------------

    def _alloc_nowait(self) -> memoryview | None:
        """A receive buffer (or the next link of a frame), or None."""
        arena = self._arena
        if arena is None:
            assert self._mempool is not None
            return self._mempool.alloc_nowait(ATOMIC_NOWARN)
        if self._chain is None:
            # A fresh read: it queues behind whoever waits (no headroom).
            return arena.alloc_nowait(self.buffer_size, NOWAIT_NOWARN)
        # The rest of a frame begun: urgent (the headroom, and ahead of
        # fresh reads), since its end frees what it holds. So frames that
        # filled the arena finish before new reads take what comes back.
        size = min(self.buffer_size, self._frame_left)  # the last: its size
        return arena.alloc_nowait(size, ATOMIC_NOWARN)

    async def _alloc(self) -> memoryview:
        """``_alloc_nowait()``, waiting in line for it."""
        arena = self._arena
        if arena is None:
            assert self._mempool is not None
            return await self._mempool.alloc()
        if self._chain is None:
            return await arena.alloc(self.buffer_size)
        size = min(self.buffer_size, max(1, self._frame_left))
        got = await arena.alloc(size, KERNEL_HIGH)
        assert got is not None  # a mask that waits
        return got

    def _take_fresh(self, last: Receiver) -> memoryview | None:
        """The fresh buffer of ``last``, the protocol lent one before this
        get_buffer(), which no read filled: handed straight to this one,
        for a fresh read, if it is a receive buffer of the same pool, empty,
        and the pool is in its steady state (nobody waits: what giving it
        back and allocating would do, without either). None otherwise."""
        buf = last._buf
        if (
            buf is None
            or last._fill
            or last._unseen
            or self._chain is not None
            or last.pool is not self.pool
            or last.buffer_size != self.buffer_size
            or not self._steady()
        ):
            return None
        last._buf = None
        last._fresh = False
        return buf

    def _reusable(self) -> bool:
        """Whether the buffer of a read that kept nothing may stay for the
        next read rather than go back: reading goes on, and the pool is in
        its steady state, so that keeping it takes nothing from a waiter,
        and no quarantine is skipped."""
        return not (self._paused or self._lost or self._sweeper is None) and (
            self._steady()
        )

    def _steady(self) -> bool:
        """Whether the pool (or arena) is in its steady state: open, nobody
        waits, no debug mode (Lender's _steady())."""
        arena = self._arena
        if arena is None:
            assert self._mempool is not None
            return self._mempool._steady()
        return arena._steady()

    def _give(self, buf: memoryview) -> None:
        """Give ``buf`` back to the pool (or arena): through the typed field,
        a C call in the compiled build."""
        arena = self._arena
        if arena is None:
            assert self._mempool is not None
            self._mempool.free(buf)
        else:
            arena.free(buf)

    def _install(self, buf: memoryview) -> None:
        """``buf`` is the buffer reads go into now; kept bytes compacted
        into a small buffer move back to its start."""
        self._buf = buf
        self._fill = 0
        small, self._small = self._small, None
        if small is not None:
            nbytes = len(small)
            buf[:nbytes] = small
            self._fill = nbytes
            self._give(small)

    def _compact(self) -> None:
        """Move the kept bytes of ``_buf`` into a buffer of their size, if
        they are few (arena only): an idle incomplete frame then pins what
        it sent, not a receive buffer."""
        arena = self._arena
        buf = self._buf
        fill = self._fill
        if arena is None or buf is None or not 0 < fill <= len(buf) // COMPACT_RATIO:
            return
        small = arena.alloc_nowait(fill, ATOMIC_NOWARN)
        if small is None:
            return  # no room: it stays where it is
        small[:] = buf[:fill]
        self._buf = None
        self._fill = 0
        self._small = small
        self._give(buf)

    def _gathered(self, nbytes: int) -> None:
        """``nbytes`` of the frame being gathered were read into ``_buf``
        (or copied there from the fallback)."""
        buf = self._buf
        chain = self._chain
        assert buf is not None and chain is not None
        self._fill += nbytes
        left = self._frame_left - nbytes
        self._frame_left = left
        if left > 0:
            if self._fill == len(buf):
                self._link_full()
            return
        # The frame is whole; -left bytes after it are the next ones.
        fill = self._fill
        after = bytes(buf[fill + left : fill]) if left else b""
        chain.append(buf, fill + left)
        self._buf = None
        self._fill = 0
        self._chain = None
        self._frame_left = 0
        self._not_holding()
        try:
            self.frame_received(chain)
        except BaseException:
            chain.free()  # what the user did not hand on: back, not leaked
            raise
        if after and not self._lost:
            self._pending += after
            self._deliver_pending()

    def _link_full(self) -> None:
        """``_buf`` is full of the frame: into the chain, and reads go on
        into a new buffer."""
        buf = self._buf
        assert buf is not None and self._chain is not None
        self._chain.append(buf, len(buf))
        self._buf = None
        self._fill = 0

    def _deliver_pending(self) -> None:
        """Deliver ``_pending`` (bytes after a frame) now if a buffer can be
        had, else wait in line for one as a dry pool's reads do."""
        pending = self._pending
        while pending and self._waiter is None and not self._lost:
            if self._buf is None:
                got = self._alloc_nowait()
                if got is None:
                    if not self.transport.is_closing():
                        self.transport.pause_reading()
                    self._waiter = asyncio.get_running_loop().create_task(self._wait())
                    return
                self._install(got)
            buf = self._buf
            assert buf is not None
            fill = self._fill
            n = min(len(buf) - fill, len(pending))
            buf[fill : fill + n] = pending[:n]
            del pending[:n]
            if self._chain is not None:
                self._gathered(n)
            else:
                self._deliver(n)

    def _held(self) -> int:
        """Bytes held for incomplete frames: the quota's measure."""
        held = self._fill
        for buf in self._full:  # a loop: no closure in a C method (compiled)
            held += len(buf)
        if self._small is not None:
            held += len(self._small)
        if self._chain is not None:
            held += len(self._chain)
        return held

    def _refuse(self, nbytes: int) -> None:
        """A frame over the quota: drop what is held of it, tell the user."""
        chain, self._chain = self._chain, None
        if chain is not None:
            chain.free()
        self._frame_left = 0
        self._not_holding()
        self.frame_too_large(nbytes)

    # -- the overload policy -----------------------------------------------

    def _holding(self) -> None:
        """Buffers are held for an incomplete frame: listed, oldest first,
        among the pool's holders (the insertion order is the age order)."""
        if not self._is_holding:
            self._is_holding = True
            self._holders[self] = asyncio.get_running_loop().time()

    def _not_holding(self) -> None:
        if self._is_holding:
            self._is_holding = False
            self._holders.pop(self, None)

    def _evict_stale(self) -> None:
        """The pool is dry: the connection that has held buffers for an
        incomplete frame longest, if for longer than ``hold_timeout``,
        loses them (closed, with a log line), so the pool cannot be held
        hostage. One per call: each dry ``get_buffer()`` and each tick of a
        waiting connection's timer (see ``_wait()``) evicts the next, so a
        burst that filled the pool with frames none can finish loses as
        few connections as it takes to move on."""
        if self.hold_timeout is None:
            return
        holders = self._holders
        if not holders:
            return
        now = asyncio.get_running_loop().time()
        if now - holders.evicted_at < self.hold_timeout / 4:
            return  # one a quarter of hold_timeout per pool: time to move on
        deadline = now - self.hold_timeout
        for protocol, since in holders.items():
            if since > deadline:
                return  # the oldest is not stale: none is
            if protocol is not self and not protocol._lost:
                break
        else:
            return
        holders.pop(protocol, None)
        holders.evicted_at = now
        protocol._is_holding = False
        _LOG.warn(
            "%r: the pool is dry and this connection has held %d bytes of "
            "an incomplete frame for more than %.1f s: closing it",
            protocol,
            protocol._held(),
            protocol.hold_timeout or 0.0,
        )
        protocol.transport.abort()

    def _evict_tick(self) -> None:
        """While this connection waits for a buffer: evict the next stale
        holder, every quarter of ``hold_timeout``."""
        self._tick = None
        if self._waiter is None or self._lost or self.hold_timeout is None:
            return
        self._evict_stale()
        self._tick = asyncio.get_running_loop().call_later(
            self.hold_timeout / 4, self._evict_tick
        )

    def _drop_small(self) -> None:
        small, self._small = self._small, None
        if small is not None:
            self._give(small)

    def _free_full(self) -> None:
        """Give back every buffer kept full."""
        full, self._full = self._full, []
        for buf in full:
            self._give(buf)

    def _drop_buf(self) -> None:
        """Give ``_buf`` back to the pool, if any."""
        buf, self._buf = self._buf, None
        self._fill = 0
        if buf is not None:
            self._give(buf)

    async def _wait(self) -> None:
        """Wait in line for a buffer, put the pending bytes in it, resume.

        The last pending bytes are not delivered at once, but left unseen at
        the start of the buffer (as kept bytes are) while reading resumes:
        the next read fills the rest of the buffer and delivers them all.
        Delivered at once, a few bytes would use up a whole buffer that the
        user takes (``take_buffer()``) or a slow peer holds, and an
        overloaded server would go on at a fallback's worth of bytes per
        buffer. If no read comes, ``_flush()`` delivers them shortly after.
        """
        pending = self._pending
        if self.hold_timeout is not None and self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(
                self.hold_timeout / 4, self._evict_tick
            )
        try:
            while pending:
                if self._buf is None:
                    buf = await self._alloc()
                    # No await from here to _buf: cancellation cannot
                    # separate the buffer from the protocol.
                    if type(buf) is not memoryview:  # a pool of the user's
                        self._give(buf)
                        raise TypeError(
                            _NOT_VIEWS.format(pool=self.pool, kind=type(buf).__name__)
                        )
                    self._install(buf)
                    if self._lost:  # lost before the task could be cancelled
                        self._drop_buf()
                        return
                into = self._buf
                assert into is not None
                buf = into
                fill = self._fill
                n = min(len(buf) - fill, len(pending))  # room > 0
                buf[fill : fill + n] = pending[:n]
                del pending[:n]
                if self._chain is not None:
                    self._gathered(n)  # a frame's bytes: into the chain
                    continue
                if pending or fill + n == len(buf):
                    self._deliver(n)  # no room to read into: now
                else:
                    self._fill = fill + n
                    self._unseen = True
                    self._unseen_at = fill
        except Exception as exc:
            self._failed(exc)
            return
        finally:
            tick, self._tick = self._tick, None
            if tick is not None:
                tick.cancel()
            if self._waiter is asyncio.current_task():
                self._waiter = None
        if self._lost or self._paused or self.transport.is_closing():
            return  # resume_reading() delivers what is unseen
        if self._unseen:
            asyncio.get_running_loop().call_soon(self._flush, FLUSH_HOPS)
        self.transport.resume_reading()

    def _flush(self, hops: int) -> None:
        """Deliver the unseen bytes ``_wait()`` left, if no read has come
        within ``hops`` more loop iterations (and the user has not paused
        since: then ``resume_reading()`` will)."""
        if not self._unseen or self._lost or self._paused:
            return
        if hops:
            asyncio.get_running_loop().call_soon(self._flush, hops - 1)
            return
        try:
            self._deliver(0)
        except Exception as exc:
            self._failed(exc)

    def _resume_held(self) -> None:
        """For ``resume_reading()``: deliver the bytes held while paused,
        then resume reading unless paused again or waiting for a buffer."""
        if self._paused or self._lost:
            return
        if self._unseen:
            try:
                self._deliver(0)
            except Exception as exc:
                self._failed(exc)
                return
        if self._paused or self._waiter is not None or self._lost:
            return
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _failed(self, exc: Exception) -> None:
        """``view_received()`` raised outside a transport's callback: as a
        failure in ``buffer_updated()`` would, the connection ends."""
        _report("delivering failed", exc, self)
        self.transport.abort()


class _Sweeper:
    """Gives back the fresh buffers (those get_buffer() took, or a read
    that kept nothing left, and no read filled) of the protocols of one
    loop.

    ``last`` is the protocol of the last fresh buffer lent: the next
    get_buffer() of any protocol takes it (``handed_on()``) or sweeps it
    (``sweep_last()``) first, since a transport finishes a read before any
    other read starts. The others of the iteration (``protocols``) are
    swept by one callback at its end, however many connections read (a
    call_soon() per read would cost more than the read's own bookkeeping).
    get_buffer() and a read that leaves its buffer fresh call ``add()``,
    which sets ``last`` and appends to ``protocols`` (unless it is ``last``
    already, and so listed), scheduling ``run()`` when it finds the list
    empty: ``protocols`` is not empty exactly while ``run()`` is scheduled.
    A protocol swept or handed on early may stay listed; ``_sweep()``
    finds nothing then.
    """

    __slots__ = ("last", "protocols")

    def __init__(self) -> None:
        self.last: Receiver | None = None
        self.protocols: list[Receiver] = []

    def add(self, protocol: Receiver) -> None:
        """``protocol`` was lent a fresh buffer: it is ``last``, and swept at
        the end of the loop's iteration at the latest."""
        if self.last is protocol:
            return  # listed: whatever unlists it clears last too
        self.last = protocol
        protocols = self.protocols
        if not protocols:
            asyncio.get_running_loop().call_soon(self.run)
        protocols.append(protocol)

    def sweep_last(self, protocol: Receiver) -> None:
        self.last = None
        self._sweep(protocol)

    def handed_on(self) -> None:
        """The fresh buffer of ``last`` went to another protocol: nothing is
        left to sweep of it. Unlisted if it was the last listed, unless it
        is the only one (``run()`` is scheduled while the list is not
        empty)."""
        protocols = self.protocols
        if len(protocols) > 1 and protocols[-1] is self.last:
            protocols.pop()
        self.last = None

    def run(self) -> None:
        self.last = None
        protocols, self.protocols = self.protocols, []
        for protocol in protocols:
            self._sweep(protocol)

    @staticmethod
    def _sweep(protocol: Receiver) -> None:
        try:
            protocol._sweep()
        except Exception as exc:  # one pool's failure spares the others
            _report("giving back failed", exc, protocol)


_LOG = RateLimitedWarning(what="connection")


class _Holders(dict["Receiver", float]):
    """The protocols holding a pool's buffers for an incomplete frame,
    oldest first, and since when (the loop's clock); and when the last of
    them was evicted."""

    evicted_at = float("-inf")


#: Per pool (or arena), its holders.
_HOLDERS: weakref.WeakKeyDictionary[object, _Holders] = weakref.WeakKeyDictionary()


def _holders(pool: object) -> _Holders:
    holders = _HOLDERS.get(pool)
    if holders is None:
        holders = _HOLDERS[pool] = _Holders()
    return holders


def _report(what: str, exc: Exception, protocol: Receiver) -> None:
    """An error outside a transport's callback, for the loop's handler."""
    asyncio.get_running_loop().call_exception_handler(
        {
            "message": f"PooledBufferedProtocol: {what}",
            "exception": exc,
            "protocol": protocol,
        }
    )


#: One sweeper per loop (it holds no reference to the loop, which may go).
_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


def _sweeper(loop: asyncio.AbstractEventLoop) -> _Sweeper:
    sweeper = _SWEEPERS.get(loop)
    if sweeper is None:
        sweeper = _SWEEPERS[loop] = _Sweeper()
    return sweeper
