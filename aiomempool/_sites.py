"""Call sites and fresh views: what debug mode and the leak sampler record.

``call_site()`` captures where an element was allocated or freed, cheaply
(code objects and line numbers); ``site_text()`` formats one as a traceback
does. ``alias()`` makes a fresh view of a buffer whose exporter can be
weakly referenced, as a memoryview cannot.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import traceback
from types import CodeType, FrameType
from typing import Any

#: Frames kept of an allocation or free site.
SITE_DEPTH = 8

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep

#: A call site: (code, line number) of its frames, innermost first.
Site = tuple[tuple[CodeType, int], ...]


def call_site() -> Site:
    """The caller's innermost SITE_DEPTH frames outside this package, up
    to the event loop's own (a task's coroutine runs on top of them).

    A microsecond: code objects and line numbers only; the rest, source
    lines included, is looked up when the site is formatted.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    site: list[tuple[CodeType, int]] = []
    while frame is not None and len(site) < SITE_DEPTH:
        code = frame.f_code
        if code.co_filename.startswith(_ASYNCIO):
            break
        site.append((code, frame.f_lineno))
        frame = frame.f_back
    return tuple(site)


def site_text(site: Site | None) -> str:
    """A site as a traceback prints it, oldest call first."""
    if not site:
        return "  (unknown)\n"
    frames = [(c.co_filename, line, c.co_name, None) for c, line in reversed(site)]
    return "".join(traceback.StackSummary.from_list(frames).format())


def alias(view: memoryview) -> tuple[memoryview, Any]:
    """A fresh view of the memory of ``view`` (``poisonable()``), and its
    exporter: a ctypes array on that memory which, unlike a memoryview, can
    be weakly referenced. The array lives as long as the fresh view or a
    view derived from it (a slice, ``memoryview(fresh)``) does. No
    memoryview exports another here: the garbage collector may crash the
    interpreter when it breaks a cycle through such a pair."""
    exporter = (ctypes.c_char * view.nbytes).from_buffer(view)
    whole = memoryview(exporter)
    fresh = whole.cast("B")
    whole.release()
    return fresh, exporter
