# The compiled build's declarations for _lender.py: an extension type with
# no fields, whose methods ElementContext and the protocol call from C.

from aiomempool._native cimport Native


cdef class Lender(Native):
    cpdef object _first_try(self, object nbytes, object gfp_mask, object timeout)
    cpdef object _alloc_for(self, object nbytes, object gfp_mask, object timeout)
    cpdef free(self, object element)
    cpdef bint _steady(self) except -1
