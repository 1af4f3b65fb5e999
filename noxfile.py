"""The test suite on every supported CPython, and the linters.

``make all-pythons`` (and CI) runs every session; a missing interpreter is
an error, not a skip.
"""

from __future__ import annotations

import nox

nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "tests_pure", "lint"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


#: The versions the compiled build is for (setup.py's OLDEST and later).
COMPILED = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """pytest on asyncio and uvloop, on the compiled build where it is made
    (the suite fails if the build fell back to pure Python: these machines
    have gcc), on the pure-Python package on 3.10."""
    session.install("-e", ".[dev]")
    expect = "1" if session.python in COMPILED else "0"
    session.run(
        "python",
        "-m",
        "pytest",
        *session.posargs,
        env={"AIOMEMPOOL_EXPECT_COMPILED": expect},
    )


@nox.session(python="3.11")
def tests_pure(session: nox.Session) -> None:
    """pytest on the pure-Python package, the reference
    (AIOMEMPOOL_NO_EXTENSIONS=1 at import, the extension modules built)."""
    session.install("-e", ".[dev]")
    session.run(
        "python",
        "-m",
        "pytest",
        *session.posargs,
        env={"AIOMEMPOOL_NO_EXTENSIONS": "1"},
    )


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict and the import layers (lint-imports)."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("lint-imports")
