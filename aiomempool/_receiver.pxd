# The compiled build's declarations for _receiver.py (see _extensions.py):
# Receiver an extension type whose fields are the names of its __slots__,
# each public (readable and writable from Python, as a slot is); the
# counters are C integers, the flags C booleans. The steps of every read
# are C calls (cdef: called on self only); what the loop calls back, or
# another protocol calls, stays a Python method.

cimport cython

from aiomempool.arena cimport BufferArena
from aiomempool.mempool cimport Mempool


cdef class Receiver


cdef class _Sweeper:
    cdef public object last
    cdef public list protocols

    cpdef add(self, Receiver protocol)
    cpdef handed_on(self)


cdef class Receiver:
    cdef public BufferArena _arena
    cdef public object _buf
    cdef public object _chain
    cdef public object _end
    cdef public object _fallback
    cdef public Py_ssize_t _fill
    cdef public Py_ssize_t _frame_left
    cdef public bint _fresh
    cdef public list _full
    cdef public object _gather_at
    cdef public object _holders
    cdef public bint _is_holding
    cdef public object _keep
    cdef public bint _lost
    cdef public Mempool _mempool
    cdef public bint _paused
    cdef public bytearray _pending
    cdef public object _small
    cdef public _Sweeper _sweeper
    cdef public bint _taken
    cdef public object _tick
    cdef public bint _unseen
    cdef public Py_ssize_t _unseen_at
    cdef public object _waiter
    cdef public Py_ssize_t buffer_size
    cdef public object hold_timeout
    cdef public Py_ssize_t max_held
    cdef public object pool
    cdef public object transport

    cdef _deliver(self, Py_ssize_t nbytes)
    @cython.locals(sweeper=_Sweeper)
    cdef _settle(self, object buf, object view, Py_ssize_t end)
    cpdef _sweep(self)
    cdef _alloc_nowait(self)
    cdef _take_fresh(self, Receiver last)
    cdef bint _reusable(self)
    cdef bint _steady(self)
    cdef _give(self, object buf)
    cdef _install(self, object buf)
    cdef _compact(self)
    cdef _gathered(self, Py_ssize_t nbytes)
    cdef _link_full(self)
    cdef _deliver_pending(self)
    cpdef Py_ssize_t _held(self) except -1
    cdef _refuse(self, object nbytes)
    cdef _holding(self)
    cdef _not_holding(self)
    cdef _evict_stale(self)
    cdef _drop_small(self)
    cdef _free_full(self)
    cdef _drop_buf(self)
    cdef _failed(self, object exc)
