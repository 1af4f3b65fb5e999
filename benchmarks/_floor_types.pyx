# cython: language_level=3, binding=True
"""The instruments of benchmarks/floors.py: pools that do the least their
kind of pool can do, compiled as aiomempool's compiled build is (Cython,
binding methods, cpdef hot paths), so that a benchmark loop driving one of
them measures the floor under that loop: what no pool of the kind, however
written, can go below on this interpreter and machine.

None of them checks an argument, counts, gates or can be closed. They are
benchmark instruments, not pools: nothing here is imported by aiomempool.
An id is taken as the compiled package takes it: the C call that
builtins.id() makes after its audit event.
"""

cdef extern from "Python.h":
    object id "PyLong_FromVoidPtr" (object)


cdef class CallingPool:
    """Mempool's steady state at its least: alloc_nowait() and alloc() call
    ``alloc_fn(gfp_mask, pool_data)`` and return what it gives; free()
    calls ``free_fn(element, pool_data)``; element() is a context whose
    entry is a coroutine (as an ``async with`` needs an awaitable) and
    whose exit is a done awaitable."""

    cdef object _alloc_fn
    cdef object _free_fn
    cdef object _data

    def __init__(self, alloc_fn, free_fn, pool_data):
        self._alloc_fn = alloc_fn
        self._free_fn = free_fn
        self._data = pool_data

    cpdef object alloc_nowait(self, object gfp_mask=None):
        return self._alloc_fn(gfp_mask, self._data)

    cpdef free(self, object element):
        self._free_fn(element, self._data)

    async def alloc(self, object gfp_mask=None):
        return self._alloc_fn(gfp_mask, self._data)

    def element(self):
        cdef Entry entry = Entry.__new__(Entry)
        entry._pool = self
        return entry


cdef class Entry:
    """CallingPool.element()'s context."""

    cdef CallingPool _pool
    cdef object _element

    def __aenter__(self):
        return self._enter()

    async def _enter(self):
        self._element = self._pool.alloc_nowait(None)
        return self._element

    def __aexit__(self, exc_type, exc, tb):
        self._pool.free(self._element)
        self._element = None
        return DONE


cdef class Done:
    """An awaitable that is done: ``await`` gets None at once."""

    def __await__(self):
        return iter(())


DONE = Done()


cdef class BarePool:
    """A free list of buffers and nothing else: alloc_nowait() pops it,
    free() appends to it. It cannot tell a double free or a foreign buffer
    from a free."""

    cdef list _free

    def __init__(self, buffers):
        self._free = list(buffers)

    cpdef object alloc_nowait(self, object gfp_mask=None):
        return self._free.pop()

    cpdef free(self, object buffer):
        self._free.append(buffer)

    async def alloc(self, object gfp_mask=None):
        return self._free.pop()


cdef class TrackedPool:
    """BarePool, and the least that refuses a double free or a foreign
    buffer: the id of every buffer out in a set (what aiomempool's buffer
    pools keep), added on alloc, removed on free (a KeyError refuses)."""

    cdef list _free
    cdef set _out

    def __init__(self, buffers):
        self._free = list(buffers)
        self._out = set()

    cpdef object alloc_nowait(self, object gfp_mask=None):
        buffer = self._free.pop()
        self._out.add(id(buffer))
        return buffer

    cpdef free(self, object buffer):
        self._out.remove(id(buffer))
        self._free.append(buffer)

    async def alloc(self, object gfp_mask=None):
        return self.alloc_nowait(gfp_mask)


cdef class BareArena:
    """Views of exactly n bytes from size classes, at their least: the
    class by one table lookup, the top free slot of its list, a slice of n
    bytes unless n is the class's size, and the slice's entry in a map back
    to its slot (a map there must be: a slice does not tell which slot it
    views); free() takes the entry out and the slot back. No ownership
    set, no budget, no counters, no checks."""

    cdef list _free_at
    cdef list _size_at
    cdef list _class_at
    cdef dict _lent

    def __init__(self, classes, per_class):
        classes = sorted(classes)
        self._free_at = [
            [memoryview(bytearray(size)) for _ in range(per_class)]
            for size in classes
        ]
        self._size_at = list(classes)
        self._class_at = []
        k = 0
        for step in range((classes[-1] >> 6) + 1):
            while classes[k] < step << 6:
                k += 1
            self._class_at.append(k)
        self._lent = {}

    cpdef object alloc_nowait(self, Py_ssize_t nbytes, object gfp_mask=None):
        cdef Py_ssize_t k = self._class_at[(nbytes + 63) >> 6]
        cdef list free = self._free_at[k]
        view = free.pop()
        if nbytes == <Py_ssize_t>self._size_at[k]:
            return view
        part = view[:nbytes]
        self._lent[id(part)] = (part, view, free)
        return part

    cpdef free(self, object view):
        entry = self._lent.pop(id(view), None)
        if entry is None:
            self._free_at[self._size_at.index(len(view))].append(view)
        else:
            (<list>entry[2]).append(entry[1])

    async def alloc(self, Py_ssize_t nbytes, object gfp_mask=None):
        return self.alloc_nowait(nbytes, gfp_mask)
