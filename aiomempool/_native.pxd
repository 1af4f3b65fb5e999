# The compiled build's declarations for _native.py: an extension type with
# no fields, the first base of every generic class it compiles.

cdef class Native:
    pass


# id() compiled: the modules that cimport it call the C function that
# builtins.id() calls after its audit event ("builtins.id"), so that the
# hot paths' ids of the buffers they track cost no Python call. The value
# is the same as id()'s; the pure-Python package calls id() itself.
cdef extern from "Python.h":
    object id "PyLong_FromVoidPtr" (object)
