# The compiled build's declarations for pools.py (see _extensions.py): the
# pools of this module extension types deriving from Mempool's, whose
# fields are the names of their __slots__, each public.

from aiomempool._native cimport id  # id() compiled: see _native.pxd
from aiomempool.mempool cimport Mempool
from aiomempool.slab cimport SlabCache


cdef class TrackedPool(Mempool):
    cdef public object _allocator
    cdef public object _handing
    cdef public set _out
    cdef public object _owns_allocator


cdef class SlabPool(TrackedPool):
    cdef public SlabCache _cache
    cdef public object _sampler
    cdef public object _zeros

    # The hot paths: the cache's fields are read from C (through _cache,
    # typed).
    cpdef object alloc_nowait(self, object gfp_mask=*)
    cpdef free(self, object element)
    cpdef object _first_try(self, object nbytes, object gfp_mask, object timeout)
