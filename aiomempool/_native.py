"""Native: the root of the classes that the compiled build makes extension
types (see ``aiomempool._extensions``).

Cython makes a class an extension type when a ``.pxd`` file beside its
module declares it so; such a class's first base must be an extension type
too, and ``typing.Generic[T]`` is none. So a generic class of the compiled
set names ``Native`` first and the run-time stand-in for ``Generic``
second (``aiomempool._generic``): ``class Mempool(Native, Generic[T])``.
In the pure-Python package it is an empty class with no instance layout.
"""

from __future__ import annotations

__all__ = ["Native"]


class Native:
    """An empty first base, with no fields and no behaviour of its own."""

    __slots__ = ()
