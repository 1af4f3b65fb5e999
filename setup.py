"""The optional compiled build: Cython compiles the modules that
aiomempool/_extensions.py lists, from their .py sources and the .pxd files
beside them. Everything else about the package is in pyproject.toml.

The build is skipped, and the pure-Python package installed, when
AIOMEMPOOL_NO_EXTENSIONS is set (not empty, not "0"), when Cython cannot be
imported, or when compiling fails (no C compiler, say): each case says so in
one line on stderr, and nothing is left half built.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
_EXTENSIONS = runpy.run_path(str(HERE / "aiomempool" / "_extensions.py"))
MODULES: tuple[str, ...] = _EXTENSIONS["MODULES"]
ENV_VAR: str = _EXTENSIONS["ENV_VAR"]

#: Cython's directives for the package: the source's annotations are for
#: the type checker (a parameter annotated ``float | None`` must still take
#: what the pure module takes, and refuse it with the pure module's words),
#: so only the .pxd files type anything.
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "embedsignature": True,
}


def _say(message: str) -> None:
    print(f"aiomempool: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python package on failure."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fall_back(exc)

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
        except Exception as exc:
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        # All or none: the modules cimport each other's declarations.
        for ext in self.extensions:
            built = Path(self.get_ext_fullpath(ext.name))
            built.unlink(missing_ok=True)
        self.extensions = []
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _say(
            f"the compiled build failed ({reason}); installing the pure-Python "
            "package, which is complete"
        )


#: The oldest CPython the compiled build is for. On 3.10 a compiled
#: coroutine pending in a task of a closed loop is not finalized when the
#: task is collected: the element handed to it would never come back. (The
#: coroutine stays alive: a frame of asyncio's report of the destroyed
#: task, which read its cr_frame, still refers to it after every
#: collection; closed by hand, it gives the element back.)
OLDEST = (3, 11)


def extensions() -> list:
    if _EXTENSIONS["forced_pure"]():
        _say(f"{ENV_VAR} is set: installing the pure-Python package only")
        return []
    if sys.version_info < OLDEST:
        _say(
            "the compiled build is for CPython 3.11 and later: installing the "
            "pure-Python package only"
        )
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _say("Cython is not installed: installing the pure-Python package only")
        return []
    from setuptools import Extension

    modules = [
        Extension(f"aiomempool.{name}", [f"aiomempool/{name}.py"]) for name in MODULES
    ]
    try:
        return cythonize(
            modules,
            compiler_directives=DIRECTIVES,
            build_dir="build/cython",
            quiet=True,
        )
    except Exception as exc:
        _say(f"Cython could not translate the modules ({exc}); pure Python only")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
