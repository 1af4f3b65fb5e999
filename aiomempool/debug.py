"""Debug mode: poisoning, use-after-free blocking, leak and double-free
tracking.

Debug mode is the kernel's slab debugging for a Python process. A pool built
with ``debug=True`` (or with ``debug=None`` while ``AIOMEMPOOL_DEBUG`` is
"1", "true" or "yes") never takes its hot paths: ``Mempool._regate()`` keeps
its gate raised, so every allocation and every free goes through the slow
paths, where the hooks of ``PoolDebug`` are:

* ``lend()``: an element leaves the pool for a caller. Where it was
  allocated is remembered, and a memoryview of bytes is lent as a fresh
  view of the same memory, released again by ``reclaim()``: a view kept
  after ``free()`` raises ``ValueError`` instead of reading the next
  borrower's data.
* ``reclaim()``: the caller gives it back. A second free is recognised, and
  reported with where the first one was.
* ``poison()`` and ``check()``: an element enters or leaves the reserve. A
  ``SlabCache`` in debug mode does the same to its free slots.

Poisoning is the kernel's (see ``_poison.py``): a caller must not assume
zeros. Only writable bytes are poisoned: a ``bytearray``, or a
one-dimensional contiguous memoryview of format 'B', the only memoryviews
lent as fresh views too. Other elements are left alone.

The sampled leak detector for pools outside debug mode is in ``_leaks.py``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import time
import traceback
import weakref
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._checks import running_loop
from ._poison import check_poison, pattern, poison, poisonable
from ._ratelimit import RateLimitedWarning, logger
from .errors import CorruptionError, DoubleFreeError

if TYPE_CHECKING:
    from .mempool import Mempool

__all__ = ["Outstanding"]

T = TypeVar("T")

#: The environment variable that turns debug mode on for pools built with
#: ``debug=None`` (the default).
ENV = "AIOMEMPOOL_DEBUG"
#: Freed fresh views kept alive to recognise a second free of one.
FREED_KEPT = 4096
#: Frames kept of an allocation or free site.
SITE_DEPTH = 8
#: Seconds between retries of quarantined elements, on the pool's loop.
RECHECK_S = 0.1

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep


def debug_enabled(debug: object) -> bool:
    """``debug`` as given, or for None, what ``AIOMEMPOOL_DEBUG`` says now."""
    if debug is None:
        return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")
    if type(debug) is not bool:
        raise TypeError(f"debug must be a bool or None, not {type(debug).__name__}")
    return debug


# -- call sites --------------------------------------------------------------


#: A call site: (code, line number) of its frames, innermost first.
Site = tuple[tuple[CodeType, int], ...]


def call_site() -> Site:
    """The caller's innermost SITE_DEPTH frames outside this package, up
    to the event loop's own (a task's coroutine runs on top of them).

    A microsecond: code objects and line numbers only; the rest, source
    lines included, is looked up when the site is formatted.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    site: list[tuple[CodeType, int]] = []
    while frame is not None and len(site) < SITE_DEPTH:
        code = frame.f_code
        if code.co_filename.startswith(_ASYNCIO):
            break
        site.append((code, frame.f_lineno))
        frame = frame.f_back
    return tuple(site)


def site_text(site: Site | None) -> str:
    """A site as a traceback prints it, oldest call first."""
    if not site:
        return "  (unknown)\n"
    frames = [(c.co_filename, line, c.co_name, None) for c, line in reversed(site)]
    return "".join(traceback.StackSummary.from_list(frames).format())


@dataclass(frozen=True)
class Outstanding(Generic[T]):
    """An element out with a caller: what ``Mempool.outstanding()`` lists."""

    #: The element, as the caller holds it.
    element: T
    #: Where it was allocated: the innermost calls outside aiomempool,
    #: formatted as a traceback prints them.
    allocated_at: str
    #: Seconds since it was allocated.
    age_s: float


# -- debug mode ----------------------------------------------------------------


def alias(view: memoryview) -> tuple[memoryview, Any]:
    """A fresh view of the memory of ``view`` (``poisonable()``), and its
    exporter: a ctypes array on that memory which, unlike a memoryview, can
    be weakly referenced. The array lives as long as the fresh view or a
    view derived from it (a slice, ``memoryview(fresh)``) does. No
    memoryview exports another here: the garbage collector may crash the
    interpreter when it breaks a cycle through such a pair."""
    exporter = (ctypes.c_char * view.nbytes).from_buffer(view)
    whole = memoryview(exporter)
    fresh = whole.cast("B")
    whole.release()
    return fresh, exporter


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
        "since",
    )  # fmt: skip

    def __init__(self, element: Any, lent: Any, exporter: Any) -> None:
        self.element = element
        self.lent = lent
        self.ref = None if exporter is None else weakref.ref(exporter)
        self.allocated_at = call_site()
        self.freed_at: Site | None = None
        self.since = time.monotonic()
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
        "_freed", "_out", "_pool", "_quarantine", "_recheck", "_warn",
        "strict", "zero",
    )  # fmt: skip

    def __init__(self, pool: Mempool[T]) -> None:
        self._pool = weakref.ref(pool)
        self._out: dict[int, _Loan] = {}
        self._freed: dict[int, tuple[object, Site, Site]] = {}
        self._quarantine: list[_Loan] = []
        self._recheck: Any = None  # the loop's handle of _retry_later()
        self._warn = RateLimitedWarning(what="use-after-free")
        #: The pool refuses elements it did not hand out (TrackedPool).
        self.strict = False
        #: Hand out zeros rather than POISON_INUSE (``zero_on_free``).
        self.zero = False

    def lend(self, element: T) -> T:
        """Hook: ``element`` leaves the pool for a caller; what to hand out."""
        lent: Any = element
        exporter = None
        if isinstance(element, memoryview) and poisonable(element):
            lent, exporter = alias(element)
        if self.zero and poisonable(lent):
            lent[:] = pattern(len(lent), 0)
        self._freed.pop(id(lent), None)  # an element freed before, out again
        self._out[id(lent)] = _Loan(element, lent, exporter)
        del exporter  # the fresh view keeps it alive, and only it
        return lent  # type: ignore[no-any-return]

    def reclaim(self, lent: T) -> T | None:
        """Hook: the caller frees ``lent``; the element to put back, or None
        if it stays in quarantine.

        Raises:
            DoubleFreeError: ``lent`` was freed already.
        """
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

    def _not_out(self, element: T) -> T:
        """``element`` is not out: a double free, or not ours to judge."""
        pool = self._pool()
        record = self._freed.get(id(element))
        reserved = pool is not None and any(e is element for e in pool._elements)
        if record is not None:
            kept, allocated_at, freed_at = record
            same = kept is element or (type(kept) is weakref.ref and kept() is element)
            if same or reserved or self.strict:
                # Not the same for sure: an element with its id was freed.
                maybe = "" if same or reserved else "?"
                raise DoubleFreeError(
                    f"{pool!r}: double free{maybe} of {element!r:.60}: first "
                    f"freed at:\n{site_text(freed_at)}allocated at:\n"
                    f"{site_text(allocated_at)}"
                )
        if reserved:
            raise DoubleFreeError(
                f"{pool!r}: double free of {element!r:.60}: it is already in "
                "the pool's reserve"
            )
        # Never handed out by this pool: a TrackedPool refuses it; a plain
        # Mempool takes it, as the kernel's does.
        return element

    def retry(self) -> None:
        """Put back every quarantined element that nobody can reach now."""
        if not self._quarantine:
            return
        pool = self._pool()
        ready = [loan for loan in self._quarantine if loan.released()]
        if not ready:
            return
        self._quarantine = [loan for loan in self._quarantine if loan not in ready]
        if pool is not None:
            for loan in ready:
                pool._put(loan.element)

    def _retry_later(self) -> None:
        self._recheck = None
        if self._pool() is None:
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
            self._pool(),
            loan.lent,
            site_text(loan.allocated_at),
            site_text(loan.freed_at),
        )

    def poison(self, element: T) -> None:
        """Hook: ``element`` enters the reserve."""
        if poisonable(element):
            poison(element)  # type: ignore[arg-type]

    def check(self, element: T) -> None:
        """Hook: ``element``, on top of the reserve, is about to leave it.

        Raises CorruptionError if its poison was overwritten, leaving it on
        top, poisoned afresh. Unless it leaves for ``free_fn``, not for a
        caller: then the report is logged.
        """
        if not poisonable(element):
            return
        pool = self._pool()
        assert pool is not None  # the pool calls this

        def describe() -> str:
            return f"{pool!r}: {pool._describe(element)}"

        try:
            check_poison(element, describe)  # type: ignore[arg-type]
        except CorruptionError as error:
            # Elements leave for a caller only while the reserve holds at
            # most min_nr; more (resize() shrinking) or closed: free_fn.
            if pool._closed or len(pool._elements) > pool._min_nr:
                logger.warning("%s", error)
            else:
                raise

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
            self._pool(),
            len(self._out),
            "".join(f"{n} x\n{site}" for site, n in sites.items()),
        )
