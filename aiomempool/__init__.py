"""aiomempool: the Linux kernel's mempool for asyncio.

A ``Mempool`` keeps a reserve of ``min_nr`` preallocated elements so that
work can always make progress when the backing allocator fails.

``aiomempool.compiled`` is True when the compiled build of the hot modules
is in use, False for the pure-Python package (``AIOMEMPOOL_NO_EXTENSIONS=1``
forces it); both behave the same.
"""

# First: with AIOMEMPOOL_NO_EXTENSIONS set, it makes the imports below take
# the pure-Python modules.
from . import _extensions  # isort: skip
from .arena import BufferArena, buffer_arena, default_classes
from .chain import BufferChain
from .errors import (
    AllocTimeoutError,
    CorruptionError,
    DoubleFreeError,
    ForeignElementError,
    InvalidFreeError,
    MempoolError,
    PoolClosedError,
    PoolExhaustedError,
)
from .gfp import GFP, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT
from .mempool import ElementContext, Mempool, named_pools
from .pools import buffer_pool, kmalloc_pool, page_pool, slab_pool
from .protocol import PooledBufferedProtocol
from .slab import SlabCache
from .sockets import RecvInto, recv_into
from .stats import (
    WAIT_BUCKETS,
    ArenaStats,
    MempoolStats,
    Outstanding,
    SizeClassStats,
    SlabStats,
)
from .writer import PooledWriter

compiled: bool = _extensions.compiled()
"""True if the compiled build of the hot modules is in use, False for the
pure-Python package (see the installation guide)."""

__all__ = [
    "GFP",
    "GFP_ATOMIC",
    "GFP_KERNEL",
    "GFP_NOWAIT",
    "WAIT_BUCKETS",
    "AllocTimeoutError",
    "ArenaStats",
    "BufferArena",
    "BufferChain",
    "CorruptionError",
    "DoubleFreeError",
    "ElementContext",
    "ForeignElementError",
    "InvalidFreeError",
    "Mempool",
    "MempoolError",
    "MempoolStats",
    "Outstanding",
    "PoolClosedError",
    "PoolExhaustedError",
    "PooledBufferedProtocol",
    "PooledWriter",
    "RecvInto",
    "SizeClassStats",
    "SlabCache",
    "SlabStats",
    "buffer_arena",
    "buffer_pool",
    "compiled",
    "default_classes",
    "kmalloc_pool",
    "named_pools",
    "page_pool",
    "recv_into",
    "slab_pool",
]

__version__ = "0.1.0"
