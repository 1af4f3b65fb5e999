# The compiled build's declarations for mempool.py (see _extensions.py):
# Mempool an extension type whose fields are the names of its __slots__,
# each public (readable and writable from Python, as a slot is). The
# counters are C integers; the rest keep Python's types.

from aiomempool._lender cimport Lender
from aiomempool._native cimport Native
from aiomempool._waitqueue cimport WaitQueue


cdef class _Bulk:
    cdef public object count
    cdef public object mask


cdef class _Handful:
    cdef public object elements
    cdef public object from_reserve


cdef class Mempool(Lender):
    cdef object __weakref__
    cdef public object _alloc_fn
    cdef public Py_ssize_t _alloc_fn_failures
    cdef public Py_ssize_t _allocs
    cdef public Py_ssize_t _bulk_waiters
    cdef public bint _closed
    cdef public object _debug
    cdef public list _elements
    cdef public object _faults
    cdef public object _free_fn
    cdef public Py_ssize_t _frees
    cdef public bint _gate
    cdef public WaitQueue _line
    cdef public object _loop
    cdef public object _max_wait_s
    cdef public object _min_nr
    cdef public object _name
    cdef public object _pool_data
    cdef public Py_ssize_t _reserve_hits
    cdef public object _retry_interval
    cdef public object _retry_timer
    cdef public Py_ssize_t _timeouts
    cdef public object _wait_counts
    cdef public object _wait_sum_s
    cdef public Py_ssize_t _waits
    cdef public object _warn

    # The hot paths: C calls from a subclass's (SlabPool's) own, and
    # alloc()'s first step, from alloc() and ElementContext.
    cpdef object alloc_nowait(self, object gfp_mask=*)
    cpdef free(self, object element)
    cpdef object _first_try(self, object nbytes, object gfp_mask, object timeout)
    cpdef object _alloc_for(self, object nbytes, object gfp_mask, object timeout)
    cpdef bint _steady(self) except -1


cdef dict _FIRST_TRY_IS_ALLOC

cdef bint _first_try_is_alloc(object cls) except -1


cdef class _Done:
    pass


cdef class ElementContext(Native):
    cdef public object _element
    cdef public bint _entered
    cdef public bint _first
    cdef public Lender _lender
    cdef public object _mask
    cdef public object _nbytes
    cdef public object _timeout
