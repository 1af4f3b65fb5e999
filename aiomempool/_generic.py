"""Generic: ``typing.Generic`` as the compiled build's classes take it.

An extension type's bases are not resolved the way a class statement's are
(PEP 560's ``__mro_entries__``), so ``typing.Generic[T]``, an alias, cannot
be one of them. Modules whose classes the compiled build makes extension
types import this class instead at run time, and ``typing.Generic`` under
``TYPE_CHECKING``: the type checker sees the real generic class, and the
interpreter a plain one whose subscript is the class itself. A subclass's
subscript, ``Mempool[bytes]``, is a ``types.GenericAlias``, as for any
generic class: it can annotate, be a base (``class P(Mempool[bytes])``),
and ``typing.get_args()`` reads it.
"""

from __future__ import annotations

import types
from typing import Any

__all__ = ["Generic"]


class Generic:
    """A base that adds nothing but subscripting."""

    __slots__ = ()

    def __class_getitem__(cls, params: Any) -> Any:
        # Generic[T] in a class statement's bases: the class itself.
        if cls is Generic:
            return cls
        return types.GenericAlias(cls, params)
