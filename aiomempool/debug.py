"""Debug mode: poisoning, use-after-free blocking, leak and double-free
tracking.

Debug mode is the kernel's slab debugging for a Python process. A pool built
with ``debug=True`` (or with ``debug=None`` while ``AIOMEMPOOL_DEBUG`` is
"1", "true" or "yes") never takes its hot paths: its gate stays raised, so
every allocation and every free goes through the slow paths, where it
calls the hooks of ``PoolDebug``:

* ``lend()``: an element leaves the pool for a caller. Where it was
  allocated is remembered, and a memoryview of bytes is lent as a fresh
  view of the same memory, released again by ``reclaim()``: a view kept
  after ``free()`` raises ``ValueError`` instead of reading the next
  borrower's data.
* ``reclaim()``: the caller gives it back. A second free is recognised, and
  reported with where the first one was, even once the element has been
  handed out again (a stale free).
* ``poison()`` and ``check()``: an element enters or leaves the reserve. A
  ``SlabCache`` in debug mode does the same to its free slots.

``PoolDebug`` knows no pool type: the pool gives it, at construction, its
reserve (to tell a free of an element already there), a way to describe an
element in a message, a way to give an element back (quarantined ones, once
nobody can reach them) and a weak reference for the pool's own name in
messages.

Poisoning is the kernel's (see ``_poison.py``): a caller must not assume
zeros. Only writable bytes are poisoned: a ``bytearray``, or a
one-dimensional contiguous memoryview of format 'B', the only memoryviews
lent as fresh views too. Other elements are left alone.

The sampled leak detector for pools outside debug mode is in ``_leaks.py``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._checks import running_loop, short_repr
from ._poison import check_poison, poison, poisonable
from ._ratelimit import RateLimitedWarning, logger
from ._sites import Site, alias, call_site, site_text
from .errors import CorruptionError, DoubleFreeError
from .stats import Outstanding

__all__ = ["PoolDebug"]

T = TypeVar("T")

#: Freed fresh views kept alive to recognise a second free of one.
FREED_KEPT = 4096
#: Seconds between retries of quarantined elements, on the pool's loop.
RECHECK_S = 0.1


class _Loan:
    """An element out with a caller, in debug mode.

    ``lent`` is what the caller got: the element itself, or for a writable
    memoryview of bytes a fresh view, an ``alias()`` of the same memory.
    Nobody can reach the memory through it once ``lent.release()`` succeeds
    (it fails while someone exports the fresh view: a numpy array, uvloop
    during ``buffer_updated()``) and ``ref``, the exporter, is dead (it
    lives while a derived view does).
    """

    __slots__ = (
        "allocated_at", "element", "freed_at", "lent", "ref", "reported",
        "since", "thread",
    )  # fmt: skip

    def __init__(self, element: Any, lent: Any, exporter: Any) -> None:
        self.element = element
        self.lent = lent
        self.ref = None if exporter is None else weakref.ref(exporter)
        self.allocated_at = call_site()
        self.freed_at: Site | None = None
        self.since = time.monotonic()
        self.thread = threading.get_ident()  # a pool is one thread's
        self.reported = False

    def released(self) -> bool:
        """Release the fresh view: True once no view of it is left."""
        if self.ref is None:
            return True
        try:
            self.lent.release()
        except BufferError:  # exported
            return False
        return self.ref() is None  # else a derived view is alive


class PoolDebug(Generic[T]):
    """The debug mode of one pool: its hooks and its records.

    Invariants: ``_out`` maps ``id(lent)`` to the loan of every element out
    with a caller, and keeps ``lent`` alive, so the ids name nothing else.
    ``_freed`` maps ids of recently freed elements to where they were
    allocated and freed; it keeps fresh views alive (at most FREED_KEPT of
    them, cheap once released) so that a second free of one is recognised
    by its id, and other elements (their memory is not its to keep) only
    through a weak reference if they allow one.
    ``_quarantine`` holds the loans whose fresh view was freed while still
    exported: their element is counted as freed, but stays out of
    circulation until ``released()`` says nobody can reach its memory.
    """

    __slots__ = (
        "_describe", "_freed", "_give_back", "_out", "_owner", "_quarantine",
        "_recheck", "_reserve", "_strict", "_warn", "_zero",
    )  # fmt: skip

    def __init__(
        self,
        reserve: list[T],
        *,
        describe: Callable[[T], str],
        give_back: Callable[[], Callable[[T], None] | None],
        owner: Callable[[], object],
        strict: bool = False,
        zero: bool = False,
    ) -> None:
        self._reserve = reserve  # the pool's own list: read, never written
        self._describe = describe
        self._give_back = give_back  # a weak method: the pool may go first
        self._owner = owner  # a weak reference: the pool, for messages
        self._out: dict[int, _Loan] = {}
        self._freed: dict[int, tuple[object, Site, Site]] = {}
        self._quarantine: list[_Loan] = []
        self._recheck: Any = None  # the loop's handle of _retry_later()
        self._warn = RateLimitedWarning(what="use-after-free")
        # The pool refuses elements it did not hand out (its allocator knows
        # them): a free of one it cannot place is a double free.
        self._strict = strict
        # Hand out zeros rather than POISON_INUSE (``zero_on_free``).
        self._zero = zero

    def lend(self, element: T, length: int | None = None) -> T:
        """Hook: ``element`` leaves the pool for a caller; what to hand out.

        ``length``: a memoryview is lent as a fresh view of its first
        ``length`` bytes only (BufferArena's exact sizes); ``reclaim()`` of
        that view gives back the whole element."""
        lent: Any = element
        exporter = None
        if isinstance(element, memoryview) and poisonable(element):
            part = element if length is None else element[:length]
            lent, exporter = alias(part)
        if self._zero and poisonable(lent):
            lent[:] = bytes(len(lent))
        self._freed.pop(id(lent), None)  # an element freed before, out again
        self._out[id(lent)] = _Loan(element, lent, exporter)
        del exporter  # the fresh view keeps it alive, and only it
        return lent  # type: ignore[no-any-return]

    def reclaim(self, lent: T) -> T | None:
        """Hook: the caller frees ``lent``; the element to put back, or None
        if it stays in quarantine.

        Raises:
            DoubleFreeError: ``lent`` was freed already.
            RuntimeError: ``lent`` is freed in another thread than the one
                it was allocated in (nothing changes).
        """
        loan = self._out.get(id(lent))
        if loan is not None and loan.thread != threading.get_ident():
            raise RuntimeError(
                f"{self._owner()!r}: {short_repr(lent)} freed in another thread "
                "than the one that allocated it: a pool is not thread-safe; "
                "call free_threadsafe() from other threads"
            )
        if self._quarantine:
            self.retry()
        loan = self._out.pop(id(lent), None)
        if loan is None:
            return self._not_out(lent)
        loan.freed_at = freed_at = call_site()
        kept: object = lent  # a fresh view: kept alive
        if loan.ref is None:
            try:
                kept = weakref.ref(lent)
            except TypeError:  # a bytearray: recognised by its id only
                kept = None
        if len(self._freed) >= FREED_KEPT:
            del self._freed[next(iter(self._freed))]  # the oldest
        self._freed[id(lent)] = (kept, loan.allocated_at, freed_at)
        if loan.released():
            return loan.element  # type: ignore[no-any-return]
        self._quarantine.append(loan)
        loop = running_loop()
        if loop is None:
            self._report(loan)
        elif self._recheck is None:
            # Not yet: uvloop exports the buffer of get_buffer() until
            # buffer_updated() returns, where it is commonly freed. Only
            # what is still exported once the callback returned is reported.
            self._recheck = loop.call_soon(self._retry_later)
        return None

    def lent_sizes(self) -> list[int]:
        """The lengths of what is lent now, for those that have one."""
        return [len(loan.lent) for loan in self._out.values() if loan.ref is not None]

    def freed(self, lent: object) -> bool:
        """True if ``lent`` is a fresh view this pool lent and had back."""
        record = self._freed.get(id(lent))
        return record is not None and record[0] is lent

    def _not_out(self, element: T) -> T:
        """``element`` is not out: a double free, or not ours to judge."""
        pool = self._owner()
        record = self._freed.get(id(element))
        reserved = any(e is element for e in self._reserve)
        if record is not None:
            kept, allocated_at, freed_at = record
            same = kept is element or (type(kept) is weakref.ref and kept() is element)
            if same or reserved or self._strict:
                # Not the same for sure: an element with its id was freed.
                maybe = "" if same or reserved else "?"
                raise DoubleFreeError(
                    f"{pool!r}: double free{maybe} of {short_repr(element)}: first "
                    f"freed at:\n{site_text(freed_at)}allocated at:\n"
                    f"{site_text(allocated_at)}"
                )
        if reserved:
            raise reserved_twice(pool, element)
        # Never handed out by this pool: a TrackedPool refuses it; a plain
        # Mempool takes it, as the kernel's does.
        return element

    def retry(self) -> None:
        """Put back every quarantined element that nobody can reach now."""
        if not self._quarantine:
            return
        ready = [loan for loan in self._quarantine if loan.released()]
        if not ready:
            return
        self._quarantine = [loan for loan in self._quarantine if loan not in ready]
        give_back = self._give_back()
        if give_back is not None:
            for loan in ready:
                give_back(loan.element)

    def _retry_later(self) -> None:
        self._recheck = None
        if self._owner() is None:
            self._quarantine.clear()
            return
        self.retry()
        for loan in self._quarantine:
            if not loan.reported:
                self._report(loan)
        if self._quarantine:
            loop = running_loop()
            if loop is not None:
                self._recheck = loop.call_later(RECHECK_S, self._retry_later)

    def _report(self, loan: _Loan) -> None:
        loan.reported = True
        self._warn.warn(
            "%r: %.60r was freed while still exported (a slice, memoryview() "
            "of it, a numpy array...): its memory stays out of circulation "
            "until that is released; allocated at:\n%sfreed at:\n%s",
            self._owner(),
            loan.lent,
            site_text(loan.allocated_at),
            site_text(loan.freed_at),
        )

    def poison(self, element: T) -> None:
        """Hook: ``element`` enters the reserve."""
        if poisonable(element):
            poison(element)  # type: ignore[arg-type]

    def check(self, element: T, *, to_caller: bool) -> None:
        """Hook: ``element``, on top of the reserve, is about to leave it.

        Raises CorruptionError if its poison was overwritten, leaving it on
        top, poisoned afresh. If it leaves for ``free_fn`` rather than for
        a caller (``to_caller`` False: the pool closing or shrinking), the
        report is logged instead.
        """
        if not poisonable(element):
            return
        owner = self._owner()

        def describe() -> str:
            return f"{owner!r}: {self._describe(element)}"

        try:
            check_poison(element, describe)  # type: ignore[arg-type]
        except CorruptionError as error:
            if to_caller:
                raise
            logger.warning("%s", error)

    def outstanding(self) -> list[Outstanding[T]]:
        """The elements out with callers, oldest first."""
        now = time.monotonic()
        return [
            Outstanding(loan.lent, site_text(loan.allocated_at), now - loan.since)
            for loan in self._out.values()
        ]

    def report_leaks(self) -> None:
        """Hook: the pool closes. One warning if elements are still out."""
        if not self._out:
            return
        sites: dict[str, int] = {}
        for loan in self._out.values():
            site = site_text(loan.allocated_at)
            sites[site] = sites.get(site, 0) + 1
        logger.warning(
            "%r closed with %d element(s) not freed, allocated at:\n%s",
            self._owner(),
            len(self._out),
            "".join(f"{n} x\n{site}" for site, n in sites.items()),
        )


def reserved_twice(pool: object, element: object) -> DoubleFreeError:
    """The error for a free of an element that is in the pool's reserve."""
    return DoubleFreeError(
        f"{pool!r}: double free of {short_repr(element)}: it is already in "
        "the pool's reserve"
    )
