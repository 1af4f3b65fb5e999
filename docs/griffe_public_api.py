"""A griffe extension: the API reference shows no private name.

mkdocstrings' filters hide private members; two places in the rendered
reference are not members, and this extension covers them:

- a base class given by a private name (``*_TIMEOUT_BASES``, a tuple that
  differs by Python version) is shown as the classes it stands for when the
  docs are built;
- a parameter annotated with a private type (a ``Protocol`` of what the
  function needs) is shown with the type its docstring gives it, as Google
  style writes it: ``name (type): text``. A private annotation without one
  is a warning, which fails ``mkdocs build --strict``.

A base class defined in a private module (the protocol's ``Receiver``)
is not shown either: its members are shown as the class's own.

And one that reads better: an attribute that ``__init__`` sets from its
parameter of the same name (``self.pool = pool``) is shown with that
parameter's annotation, not as ``pool = pool``.
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any

import griffe

_PRIVATE = re.compile(r"(?<![\w.])_[A-Za-z]\w*")
_log = logging.getLogger("mkdocs.plugins.griffe_public_api")


def _is_private(expr: object) -> bool:
    return bool(_PRIVATE.search(str(expr)))


def _from_private_module(obj: griffe.Object) -> bool:
    return _from_private_module_path(obj.path)


def _from_private_module_path(path: str) -> bool:
    return any(part.startswith("_") for part in path.split(".")[:-1])


class PublicAPI(griffe.Extension):
    """Replaces the private names of bases and annotations (see above)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        exports = obj.exports if isinstance(obj, griffe.Module) else None
        for member in obj.members.values():
            if exports is not None and member.name not in exports:
                # A private module (_budget, _leaks) is never rendered:
                # every public name is defined in a public module.
                public = not member.name.startswith("_")
                if isinstance(member, griffe.Module) and public:
                    self._walk(member)
                continue
            if member.is_alias or member.name.startswith("_"):
                if member.name == "__init__" and isinstance(member, griffe.Function):
                    self._parameters(member, obj)
                continue
            if isinstance(member, griffe.Class):
                self._bases(member)
                self._attributes(member)
                self._walk(member)
            elif isinstance(member, griffe.Function):
                self._parameters(member, member)
            elif isinstance(member, griffe.Module):
                self._walk(member)

    def _bases(self, cls: griffe.Class) -> None:
        self._adopt(cls)
        if not any(_is_private(base) for base in cls.bases):
            return
        runtime = getattr(importlib.import_module(cls.module.path), cls.name)
        cls.bases = [
            griffe.ExprName(
                base.__qualname__
                if base.__module__ == "builtins"
                else f"{base.__module__}.{base.__qualname__}",
                parent=cls,
            )
            for base in runtime.__bases__
        ]

    def _adopt(self, cls: griffe.Class) -> None:
        """A base defined in a private module (``_receiver.Receiver``, the
        protocol's state and logic) is not shown: its members are shown as
        the class's own, as if defined there."""
        hidden = [base for base in cls.resolved_bases if _from_private_module(base)]
        if not hidden:
            return
        for base in hidden:
            for name, member in base.members.items():
                if name not in cls.members:
                    cls.set_member(name, member)
        cls.bases = [
            base
            for base in cls.bases
            if not _from_private_module_path(getattr(base, "canonical_path", ""))
        ]

    def _attributes(self, cls: griffe.Class) -> None:
        init = cls.members.get("__init__")
        if not isinstance(init, griffe.Function):
            return
        for attr in cls.members.values():
            if not isinstance(attr, griffe.Attribute) or attr.annotation is not None:
                continue
            if attr.name in init.parameters and str(attr.value) == attr.name:
                attr.annotation = init.parameters[attr.name].annotation
                attr.value = None

    def _parameters(self, func: griffe.Function, documented: griffe.Object) -> None:
        private = [p for p in func.parameters if _is_private(p.annotation)]
        if not private:
            return
        given: dict[str, Any] = {}
        if documented.docstring is not None:
            for section in documented.docstring.parse("google"):
                if section.kind is griffe.DocstringSectionKind.parameters:
                    for param in section.value:
                        given[param.name] = param.annotation
        for param in private:
            annotation = given.get(param.name)
            if annotation is None or _is_private(annotation):
                _log.warning(
                    "%s: parameter %r is annotated with a private type; give it "
                    "a public one in the docstring: %s (type): ...",
                    documented.path,
                    param.name,
                    param.name,
                )
                continue
            param.annotation = annotation
