# The compiled build's declarations for slab.py (see _extensions.py): the
# cache and its slabs extension types whose fields are the names of their
# __slots__, each public (readable and writable from Python, as a slot is).
# The counters of the hot paths are C integers; the free list keeps
# Python's type (a list, or a subclass a test puts there), which
# _pop_free() reads as a list.

cimport cython

from aiomempool._native cimport id  # id() compiled: see _native.pxd


cdef class _Slab:
    cdef public object base
    cdef public object block
    cdef public object idle_since
    cdef public object number
    cdef public object views


cdef class SlabCache:
    cdef object __weakref__
    cdef public object _aliases
    cdef public object _alloc_failures
    cdef public object _budget
    cdef public object _busy
    cdef public Py_ssize_t _cap
    cdef public bint _closed
    cdef public object _debug
    cdef public object _free
    cdef public Py_ssize_t _frees
    cdef public object _given_back
    cdef public object _headroom
    cdef public Py_ssize_t _high_water
    cdef public Py_ssize_t _limit
    cdef public object _mapped
    cdef public object _max_objects
    cdef public object _name
    cdef public object _next_number
    cdef public Py_ssize_t _nr_objects
    cdef public object _object_size
    cdef public object _objects_per_slab
    cdef public object _out_by_slab
    cdef public object _page_aligned
    cdef public object _slabs
    cdef public object _slots
    cdef public object _stranded
    cdef public object _trim_after
    cdef public object _trim_floor
    cdef public object _trim_timer
    cdef public object _unreclaimable

    # The free list's two moves, C calls from the pools' hot paths.
    @cython.locals(free=list, out=Py_ssize_t)
    cpdef object _pop_free(self, Py_ssize_t limit, set busy)
    cpdef _push_free(self, object view, set busy)
