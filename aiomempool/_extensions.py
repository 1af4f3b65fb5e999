"""Which build of the package is in use: compiled, or pure Python.

The compiled build is made from the same source: Cython compiles the
modules of ``MODULES`` (``.py`` files, each with a ``.pxd`` file of
declarations beside it that makes its classes extension types) when the
package is installed where a C compiler exists. The pure-Python modules
stay in the package beside the extension modules, and are the reference.

``AIOMEMPOOL_NO_EXTENSIONS=1`` (any value but empty or "0") forces the
pure-Python modules at import, extension modules built or not: a finder
put first on ``sys.meta_path`` before any of them is imported serves each
from its ``.py`` file. At install time it skips the build (setup.py reads
this module for the list and the variable's rule).

This module is read by setup.py without the package: standard library
imports only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["ENV_VAR", "MODULES", "compiled", "forced_pure"]

#: The modules the compiled build makes extension modules, in the order of
#: the import layers (lowest first).
MODULES = (
    "_native",
    "_lender",
    "_waitqueue",
    "slab",
    "mempool",
    "pools",
    "arena",
    "_receiver",
)

#: The environment variable that forces the pure-Python modules.
ENV_VAR = "AIOMEMPOOL_NO_EXTENSIONS"


def forced_pure(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """True if ``AIOMEMPOOL_NO_EXTENSIONS`` asks for the pure modules."""
    return environ.get(ENV_VAR, "") not in ("", "0")


class _PureFinder(importlib.abc.MetaPathFinder):
    """Serves the compiled set of modules from their ``.py`` files."""

    def __init__(self, package: str, folder: str) -> None:
        self._package = package
        self._folder = folder

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != self._package or name not in MODULES:
            return None
        source = os.path.join(self._folder, name + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def _is_extension(module: ModuleType) -> bool:
    origin = getattr(module, "__file__", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled() -> bool:
    """True if every module of ``MODULES`` was imported from an extension
    module (all are built together, or none)."""
    return all(_is_extension(sys.modules[f"{__package__}.{name}"]) for name in MODULES)


# Before any module of the set is imported: aiomempool/__init__.py imports
# this module first.
if forced_pure() and __package__:
    sys.meta_path.insert(0, _PureFinder(__package__, os.path.dirname(__file__)))
