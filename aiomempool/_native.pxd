# The compiled build's declarations for _native.py: an extension type with
# no fields, the first base of every generic class it compiles.

cdef class Native:
    pass
