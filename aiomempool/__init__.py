"""aiomempool: the Linux kernel's mempool for asyncio.

A ``Mempool`` keeps a reserve of ``min_nr`` preallocated elements so that
work can always make progress when the backing allocator fails.
"""

from .element import ElementContext
from .errors import (
    AllocTimeoutError,
    MempoolError,
    PoolClosedError,
    PoolExhaustedError,
)
from .gfp import GFP, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT
from .mempool import Mempool
from .stats import WAIT_BUCKETS, MempoolStats, named_pools

__all__ = [
    "GFP",
    "GFP_ATOMIC",
    "GFP_KERNEL",
    "GFP_NOWAIT",
    "WAIT_BUCKETS",
    "AllocTimeoutError",
    "ElementContext",
    "Mempool",
    "MempoolError",
    "MempoolStats",
    "PoolClosedError",
    "PoolExhaustedError",
    "named_pools",
]

__version__ = "0.1.0"
