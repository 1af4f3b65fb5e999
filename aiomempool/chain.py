"""BufferChain: a frame larger than one buffer, as the pool's buffers it
arrived in.

A mechanism that knows nothing of protocols: a list of pool buffers, each
with the count of its bytes that belong to the frame, and the pool (or
arena) they go back to. ``PooledBufferedProtocol.gather()`` builds one
per frame, read after read, without a copy; ``PooledWriter.write()`` sends
one with ``transport.writelines()`` and gives each buffer back once sent.

Invariants: every buffer in ``_links`` is out of its pool and owned by the
chain, counted once; ``_nbytes`` is the sum of the counts. ``free()`` and
``detach()`` empty the chain, so a buffer is never given back twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ._checks import short_repr

__all__ = ["BufferChain"]


class _Frees(Protocol):
    """Where the buffers go back: a pool of memoryviews, or an arena."""

    def free(self, element: memoryview | None, /) -> None: ...


class BufferChain:
    """The bytes of one frame, in the pool buffers they arrived in.

    Picture a train of freight cars: each car (a buffer of the pool) is
    loaded up to a mark (its count of the frame's bytes); the train is
    handed over whole, read car by car, and each car goes back to the depot
    (the pool) once unloaded.

    ``len(chain)`` is the frame's length; iterating gives one memoryview per
    buffer, the frame's bytes in order (valid until the chain is freed), the
    form ``transport.writelines()`` takes. ``tobytes()`` and ``copy_into()``
    copy the frame out. ``free()`` gives every buffer back (``with chain:``
    frees on exit). Not thread-safe; never awaits.

    Args:
        pool (Mempool | BufferArena): Where the buffers go back.
    """

    __slots__ = ("_links", "_nbytes", "_pool")

    def __init__(self, pool: _Frees) -> None:
        self._pool = pool
        self._links: list[tuple[memoryview, int]] = []
        self._nbytes = 0

    def __repr__(self) -> str:
        return (
            f"<BufferChain nbytes={self._nbytes} buffers={len(self._links)} "
            f"pool={short_repr(self._pool)}>"
        )

    def __len__(self) -> int:
        """Bytes of the frame."""
        return self._nbytes

    @property
    def nbuffers(self) -> int:
        """Buffers the chain holds."""
        return len(self._links)

    @property
    def pool(self) -> _Frees:
        """What the buffers go back to."""
        return self._pool

    def append(self, buf: memoryview, nbytes: int) -> None:
        """Add ``buf``, a buffer of the pool, whose first ``nbytes`` bytes
        come next in the frame. The chain owns it from now on.

        Raises:
            ValueError: ``nbytes`` is not from 1 to ``len(buf)``.
        """
        if type(nbytes) is not int or not 0 < nbytes <= len(buf):
            raise ValueError(
                f"nbytes must be an int from 1 to {len(buf)}, got {nbytes!r}"
            )
        self._links.append((buf, nbytes))
        self._nbytes += nbytes

    def __iter__(self) -> Iterator[memoryview]:
        """The frame's bytes, one memoryview per buffer, in order."""
        for buf, nbytes in self._links:
            yield buf if nbytes == len(buf) else buf[:nbytes]

    def views(self) -> list[memoryview]:
        """The memoryviews of ``iter(chain)``, as a list."""
        return list(self)

    def tobytes(self) -> bytes:
        """The frame, copied into one ``bytes``."""
        return b"".join(self)

    def copy_into(self, dest: memoryview | bytearray, offset: int = 0) -> int:
        """Copy the frame into ``dest`` from ``offset``; return its length.

        Raises:
            ValueError: ``dest`` has not room for it from ``offset``.
        """
        target = dest if isinstance(dest, memoryview) else memoryview(dest)
        if not 0 <= offset <= len(target) - self._nbytes:
            raise ValueError(
                f"dest must hold {self._nbytes} bytes from offset {offset}, "
                f"it holds {len(target)}"
            )
        at = offset
        for view in self:
            target[at : at + len(view)] = view
            at += len(view)
        return self._nbytes

    def detach(self) -> list[tuple[memoryview, int]]:
        """Take the buffers out, each with its count: the chain is empty
        afterwards, and they are the caller's (a writer's) to give back."""
        links, self._links = self._links, []
        self._nbytes = 0
        return links

    def free(self) -> None:
        """Give every buffer back to the pool; the chain is empty after.
        Idempotent. Each buffer is freed even if one is refused; then the
        first error is raised."""
        links = self.detach()
        error: BaseException | None = None
        free = self._pool.free
        for buf, _ in links:
            try:
                free(buf)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> BufferChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()
