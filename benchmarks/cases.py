"""What a table is made of: groups of cases, one case an implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from benchmarks.harness import Batch, HandoffRun

J = TypeVar("J", Batch, HandoffRun)

#: Elements shared by the tasks of the contended runs, and the size of every
#: pool in the uncontended ones.
ELEMENTS = 16
#: Buffers held at once in the buffer cycles, as in a busy server: each
#: cycle takes one and gives back the one taken 64 cycles before.
IN_FLIGHT = 64
#: The buffer sizes measured.
BUFFER_SIZES = (4096, 65536, 262144)

# Families, for the tables and the charts.
FLOOR = "floor"
NO_POOL = "no pool"
HAND_ROLLED = "hand-rolled"
LIBRARY = "library"
AIOMEMPOOL = "aiomempool"


@dataclass(frozen=True)
class Case(Generic[J]):
    """One implementation: a job that measures it, or why there is none."""

    label: str
    family: str
    job: J | None = None
    #: Why there is no job ("not installed ...", "cannot wait: ...").
    status: str = ""
    #: Said under the table when the case fails with this exception type.
    known_failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """Cases measured together, interleaved, against one reference."""

    key: str
    title: str
    unit: str
    #: The label of the case every ratio of the group divides by.
    reference: str
    cases: list[Case[Batch]]


def buffer_group_key(size: int) -> str:
    return f"buffers-{size}"


def kib(size: int) -> str:
    return f"{size // 1024} KiB"
