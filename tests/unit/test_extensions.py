"""The two builds: compiled where a C compiler exists, pure Python forced by
AIOMEMPOOL_NO_EXTENSIONS, and a build that fails falling back to pure."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import pytest

import aiomempool
from aiomempool import Mempool, _extensions
from aiomempool._extensions import ENV_VAR, MODULES, forced_pure

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(aiomempool.__file__).parent

PROBE = """
import json, sys
import aiomempool
from aiomempool import Mempool
pool = Mempool(2, lambda gfp, data: bytearray(8), lambda e, data: None)
element = pool.alloc_nowait()
pool.free(element)
print(json.dumps({
    "compiled": aiomempool.compiled,
    "files": {m: sys.modules["aiomempool." + m].__file__
              for m in aiomempool._extensions.MODULES},
    "stats": pool.stats().allocs,
}))
"""


def probe(env: dict[str, str]) -> dict[str, typing.Any]:
    """PROBE's findings, in a fresh interpreter with ``env`` added."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, typing.Any] = json.loads(done.stdout)
    return result


def is_extension(path: str) -> bool:
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_compiled_tells_which_build_every_module_of_the_set_comes_from() -> None:
    assert type(aiomempool.compiled) is bool
    files = [sys.modules[f"aiomempool.{name}"].__file__ or "" for name in MODULES]
    assert aiomempool.compiled == all(is_extension(f) for f in files)
    if not aiomempool.compiled:
        # All or none: a build that failed left no module of the set.
        assert not any(is_extension(f) for f in files)


def test_the_compiled_build_is_in_use_where_ci_expects_it() -> None:
    if os.environ.get("AIOMEMPOOL_EXPECT_COMPILED") != "1":
        pytest.skip("the compiled build is expected only where CI says so")
    assert not forced_pure(), f"{ENV_VAR} is set"
    assert aiomempool.compiled, "the package was installed without its extensions"


def test_the_variable_forces_the_pure_modules_even_with_extensions_built() -> None:
    result = probe({ENV_VAR: "1"})
    assert result["compiled"] is False
    assert all(path.endswith(".py") for path in result["files"].values())
    assert result["stats"] == 1  # and the pure pool works


def test_without_the_variable_the_build_installed_is_used() -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    built = all((PACKAGE / f"{name}{suffix}").exists() for name in MODULES)
    result = probe({ENV_VAR: "0"})
    assert result["compiled"] is built
    assert all(is_extension(f) is built for f in result["files"].values())
    assert result["stats"] == 1


@pytest.mark.parametrize(
    ("value", "pure"),
    [("", False), ("0", False), ("1", True), ("yes", True), ("true", True)],
)
def test_the_variable_is_on_when_set_to_anything_but_empty_or_zero(
    value: str, pure: bool
) -> None:
    assert forced_pure({ENV_VAR: value}) is pure
    assert forced_pure({}) is False


def test_every_compiled_module_has_its_declarations_beside_it() -> None:
    for name in MODULES:
        assert (PACKAGE / f"{name}.py").is_file(), name
        assert (PACKAGE / f"{name}.pxd").is_file(), name
    # And nothing declared that the build does not compile.
    assert {p.stem for p in PACKAGE.glob("*.pxd")} == set(MODULES)


def test_mempool_stays_generic_for_the_type_checker_and_at_run_time() -> None:
    alias = Mempool[bytes]
    assert typing.get_origin(alias) is Mempool
    assert typing.get_args(alias) == (bytes,)

    class Pool(Mempool[bytearray]):
        """A subclass through the subscript, as users write one."""

    pool = Pool(1, lambda gfp, data: bytearray(1), lambda e, data: None)
    assert isinstance(pool, Mempool)
    pool.free(pool.alloc_nowait())
    pool.close()


def test_the_runtime_finder_is_installed_only_when_asked() -> None:
    finders = [f for f in sys.meta_path if isinstance(f, _extensions._PureFinder)]
    assert bool(finders) == forced_pure()


def _copy_source(to: Path) -> Path:
    """What a build of the package needs, away from the tree (so that the
    build leaves nothing in it)."""
    src = to / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "aiomempool",
        src / "aiomempool",
        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"),
    )
    return src


def _wheel(src: Path, out: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """Build a wheel of ``src`` without isolation (this environment has the
    build's requirements); its file names and the build's output."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(out),
            str(src),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("aiomempool-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        return whl.namelist(), done.stdout + done.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("Cython") is None, reason="Cython is not installed"
)
@pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the compiled build is for 3.11 and later"
)
def test_a_build_without_a_c_compiler_falls_back_to_pure_python_in_one_line(
    tmp_path: Path,
) -> None:
    src = _copy_source(tmp_path)
    names, output = _wheel(
        src, tmp_path / "wheels", {"CC": "/nonexistent/cc", ENV_VAR: ""}
    )
    assert not [n for n in names if is_extension(n)], names
    assert "aiomempool/mempool.py" in names
    lines = [ln for ln in output.splitlines() if ln.strip().startswith("aiomempool: ")]
    assert len(lines) == 1, lines
    assert "installing the pure-Python package" in lines[0]


def test_the_variable_at_build_time_skips_the_build(tmp_path: Path) -> None:
    src = _copy_source(tmp_path)
    names, output = _wheel(src, tmp_path / "wheels", {ENV_VAR: "1"})
    assert not [n for n in names if is_extension(n)], names
    assert f"{ENV_VAR} is set" in output
