"""Budget: one bound, in bytes, on the slabs of several caches together.

A mechanism that knows nothing of its members but a small protocol: a
member charges the bytes of a slab before it makes one (``room()``, then
``charge()``) and credits them when the slab goes (``credit()``). When a
member needs more room than is left, the budget asks the other members to
give back slabs that are wholly free (``reclaim()``), so that memory moves
to where it is needed: the kernel's shrinkers, called under pressure.

Invariants: ``used`` is the sum of the bytes of every slab its members hold
(each charges exactly what it credits later), and ``used <= cap`` always:
only ``charge()`` raises it, after a ``room()`` that said it fits. Nothing
here awaits, and nothing is thread-safe: the event loop's thread is the
lock, as for the caches.
"""

from __future__ import annotations

import weakref
from typing import Protocol

__all__ = ["Budget"]


class _Member(Protocol):
    """What the budget needs of a cache that shares it."""

    def _reclaim(self, nbytes: int) -> int:
        """Give back wholly free slabs, about ``nbytes`` worth or more if
        it has them; return the bytes given back (credited already)."""
        ...


class Budget:
    """A shared bound of ``limit`` bytes, ``cap`` for urgent requests.

    Picture a household's money for groceries: each shop (a cache) asks
    before it buys a carton (a slab), and when the money is spent the
    household first returns unopened cartons bought at the other shops.
    """

    __slots__ = ("_members", "_next", "cap", "high_water", "limit", "used")

    def __init__(self, limit: int, headroom: int = 0) -> None:
        #: Bytes of slabs an ordinary request may bring the total to.
        self.limit = limit
        #: Bytes an urgent request (``GFP.HIGH``) may bring it to.
        self.cap = limit + headroom
        #: Bytes charged now: the slabs of every member.
        self.used = 0
        #: The most bytes ever charged at once.
        self.high_water = 0
        self._members: list[weakref.ref[_Member]] = []
        self._next = 0  # where the next reclaim starts: the load spread

    def __repr__(self) -> str:
        return f"<Budget used={self.used} limit={self.limit} cap={self.cap}>"

    def join(self, member: _Member) -> None:
        """Add ``member`` (held weakly) to those asked to give back."""
        self._members.append(weakref.ref(member))

    def room(self, high: bool) -> int:
        """Bytes a slab may take now: to ``limit``, or to ``cap`` if
        ``high``."""
        return (self.cap if high else self.limit) - self.used

    def charge(self, nbytes: int) -> None:
        """Count a new slab of ``nbytes``; ``room()`` said it fits."""
        self.used += nbytes
        if self.used > self.high_water:
            self.high_water = self.used

    def credit(self, nbytes: int) -> None:
        """A slab of ``nbytes`` went back to the operating system."""
        self.used -= nbytes

    def reclaim(self, nbytes: int, asker: object) -> int:
        """Ask the members other than ``asker`` to give back wholly free
        slabs until ``nbytes`` are back; return the bytes given back.

        The members are asked in turn, starting after the one where the
        last reclaim stopped, so that no member is always the first to
        lose its free slabs.
        """
        members = self._members
        got = 0
        count = len(members)
        for step in range(count):
            index = (self._next + step) % count
            member = members[index]()
            if member is None or member is asker:
                continue
            got += member._reclaim(nbytes - got)
            if got >= nbytes:
                self._next = (index + 1) % count
                break
        return got
