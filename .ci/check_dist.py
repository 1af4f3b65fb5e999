"""Check what `make dist` built: the wheel holds the package alone (its
compiled modules beside the .py files), the sdist everything it takes to
build, test, benchmark and document it.

    python .ci/check_dist.py dist/

Prints both listings (`--list`) or a summary, and exits 1 naming what is
missing or extra.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import runpy
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
#: Paths the sdist must carry, relative to its top folder; a folder stands
#: for every file in it (but compiled ones), as MANIFEST.in grafts it.
SDIST_MUST = [
    "LICENSE",
    "README.md",
    "MANIFEST.in",
    "Makefile",
    "noxfile.py",
    "mkdocs.yml",
    "pyproject.toml",
    "setup.py",
    "PKG-INFO",
    "aiomempool",
    "tests",
    "docs",
    "examples",
    "benchmarks",
]


#: The modules the compiled build makes extension modules: the wheel, built
#: where a C compiler exists, holds one for each beside its .py file.
MODULES = runpy.run_path(str(ROOT / "aiomempool" / "_extensions.py"))["MODULES"]
#: What a build leaves in the tree that no distribution carries.
BUILT = (".so", ".pyd", ".c")


def tracked(folder: str) -> set[str]:
    """The files under ``folder`` of the tree, as the sdist names them."""
    base = ROOT / folder
    return {
        str(path.relative_to(ROOT))
        for path in base.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not path.name.endswith(BUILT)
    }


def check(dist: Path, show: bool) -> list[str]:
    problems: list[str] = []
    wheels = sorted(dist.glob("aiomempool-*.whl"))
    sdists = sorted(dist.glob("aiomempool-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist in {dist}, found {wheels + sdists}"]

    with zipfile.ZipFile(wheels[0]) as whl:
        wheel_files = whl.namelist()
        info = next(n for n in wheel_files if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(whl.read(info).decode())
    package = {n for n in wheel_files if ".dist-info/" not in n}
    expected = {f"aiomempool/{p.name}" for p in (ROOT / "aiomempool").glob("*.py")}
    expected.add("aiomempool/py.typed")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    expected |= {f"aiomempool/{name}{suffix}" for name in MODULES}
    if package != expected:
        problems.append(
            f"wheel: missing {sorted(expected - package)}, "
            f"extra {sorted(package - expected)}"
        )
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_files):
        problems.append("wheel: no LICENSE in its .dist-info/licenses/")
    if metadata["License-Expression"] != "MIT":
        problems.append(f"wheel: License-Expression {metadata['License-Expression']}")

    with tarfile.open(sdists[0]) as sdist:
        names = [m.name for m in sdist.getmembers() if m.isfile()]
    top = PurePosixPath(names[0]).parts[0]
    sdist_files = {str(PurePosixPath(*PurePosixPath(n).parts[1:])) for n in names}
    for must in SDIST_MUST:
        wanted = tracked(must) if (ROOT / must).is_dir() else {must}
        missing = wanted - sdist_files
        if missing:
            problems.append(f"sdist: missing {sorted(missing)}")
    stray = [n for n in sdist_files if n.endswith((".pyc", ".pyo", *BUILT))]
    if stray:
        problems.append(f"sdist: compiled files {stray}")

    if show:
        print(f"{sdists[0].name} ({top}/):")
        print("\n".join(f"  {n}" for n in sorted(sdist_files)))
        print(f"{wheels[0].name}:")
        print("\n".join(f"  {n}" for n in sorted(wheel_files)))
    else:
        folders = sorted({n.split("/")[0] for n in sdist_files if "/" in n})
        print(
            f"{sdists[0].name}: {len(sdist_files)} files, folders {folders}\n"
            f"{wheels[0].name}: {len(package)} files of aiomempool/ "
            f"(py.typed among them) and {len(wheel_files) - len(package)} "
            "of its .dist-info"
        )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", type=Path, help="the folder of the built files")
    parser.add_argument("--list", action="store_true", help="list every file")
    args = parser.parse_args()
    problems = check(args.dist, args.list)
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
