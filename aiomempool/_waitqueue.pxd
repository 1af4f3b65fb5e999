# The compiled build's declarations for _waitqueue.py (see _extensions.py):
# its classes extension types whose fields are the names of their
# __slots__, each public; the two calls of every wait and hand-off are C
# calls for a caller that knows the type (Mempool, BufferArena).

cdef class Wake:
    cdef public object name


cdef class Fresh:
    cdef public object element


cdef class WaitQueue:
    cdef public object _entries
    cdef public Py_ssize_t nparked
    cdef public object loop
    cdef public object on_empty

    cpdef bint has_live(self)
    cpdef bint hand(self, object value)
    # The line's two checks, C calls from every wait and hand-off.
    cpdef _served(self)
    cpdef bint _dead(self) except -1
