"""The types a user sees: a strictly typed user's file passes mypy --strict,
and what may be None is typed so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

HERE = Path(__file__).parent


def test_a_strictly_typed_users_code_needs_no_assert_or_cast() -> None:
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--python-version", "3.10",
         str(HERE / "user_code.py")]
    )  # fmt: skip
    assert status == 0, out + err
    # Spelled by the typeshed of the mypy installed: memoryview[int] or not.
    revealed = [
        re.sub(r"builtins\.|\[int\]", "", t)
        for t in re.findall(r'Revealed type is "([^"]+)"', out)
    ]
    assert revealed == [
        "memoryview | None",  # await alloc(GFP_NOWAIT)
        "memoryview | None",  # alloc_nowait(GFP_ATOMIC)
        "bytearray",  # await kp.alloc()
    ], out
