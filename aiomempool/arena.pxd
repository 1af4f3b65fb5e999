# The compiled build's declarations for arena.py (see _extensions.py): the
# arena an extension type whose fields are the names of its __slots__, each
# public (readable and writable from Python, as a slot is). Its hot paths
# are C calls, and read the class pools' and caches' fields from C.

cimport cython

from aiomempool._lender cimport Lender
from aiomempool._native cimport id  # id() compiled: see _native.pxd
from aiomempool._waitqueue cimport WaitQueue
from aiomempool.pools cimport SlabPool
from aiomempool.slab cimport SlabCache


cdef class _Want:
    cdef public object count
    cdef public object mask
    cdef public object pool


cdef class BufferArena(Lender):
    cdef object __weakref__
    cdef public object _budget
    cdef public object _classes
    cdef public bint _closed
    cdef public Py_ssize_t _countdown
    cdef public object _debug
    cdef public bint _gate
    cdef public object _guarantee
    cdef public dict _lent
    cdef public WaitQueue _line
    cdef public object _loop
    cdef public object _name
    cdef public list _pool_at
    cdef public object _pools
    cdef public object _retry_interval
    cdef public object _retry_timer
    cdef public Py_ssize_t _round
    cdef public object _samplers
    cdef public Py_ssize_t _shift
    cdef public list _size_at
    cdef public WaitQueue _urgent
    cdef public object _warn

    @cython.locals(pool=SlabPool, cache=SlabCache, n=Py_ssize_t, k=Py_ssize_t)
    cpdef object alloc_nowait(self, object nbytes, object gfp_mask=*)
    @cython.locals(pool=SlabPool, entry=tuple)
    cpdef free(self, object view)
    @cython.locals(pool=SlabPool)
    cdef _free_slot(self, object view)
    cpdef object _first_try(self, object nbytes, object gfp_mask, object timeout)
    cpdef Py_ssize_t _step(self, object nbytes) except -1
    cpdef object _alloc_for(self, object nbytes, object gfp_mask, object timeout)
    cpdef bint _steady(self) except -1
