"""SlabCache: sizes, the views, the free list, limits and headroom, refused
frees, shrink, close, page alignment, arguments, stats and repr."""

from __future__ import annotations

import dataclasses
import mmap
import random
from typing import Any

import pytest
from helpers import address

from aiomempool import (
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    Mempool,
    PoolClosedError,
)
from aiomempool.errors import DoubleFreeError, ForeignElementError
from aiomempool.slab import SlabCache
from aiomempool.stats import SlabStats

MiB = 1 << 20


def take(cache: SlabCache, n: int, gfp_mask: GFP = GFP_KERNEL) -> list[memoryview]:
    views = [cache.alloc(gfp_mask) for _ in range(n)]
    assert all(v is not None for v in views)
    return [v for v in views if v is not None]


# -- sizes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("object_size", "per_slab"),
    [(65536, 16), (3000, MiB // 3000), (1, MiB), (MiB, 1), (3 * MiB, 1)],
)
def test_a_slab_holds_about_one_mib_by_default(object_size: int, per_slab: int) -> None:
    assert SlabCache(object_size).objects_per_slab == per_slab


def test_objects_per_slab_is_cut_down_to_max_objects_plus_headroom() -> None:
    assert SlabCache(64, objects_per_slab=100, max_objects=5).objects_per_slab == 6
    assert SlabCache(64, max_objects=5, headroom=0).objects_per_slab == 5
    assert SlabCache(64, objects_per_slab=3, max_objects=5).objects_per_slab == 3


def test_default_headroom_is_a_sixteenth_of_max_objects_at_least_one() -> None:
    assert SlabCache(64, max_objects=64).headroom == 4
    assert SlabCache(64, max_objects=10).headroom == 1
    assert SlabCache(64).headroom == 0
    assert SlabCache(64, max_objects=64, headroom=0).headroom == 0


def test_properties_read_back_the_arguments() -> None:
    cache = SlabCache(
        8192, objects_per_slab=4, max_objects=7, headroom=2, page_aligned=True, name="x"
    )
    assert (cache.object_size, cache.objects_per_slab) == (8192, 4)
    assert (cache.max_objects, cache.headroom) == (7, 2)
    assert cache.page_aligned and cache.name == "x"
    with pytest.raises(AttributeError):
        cache.object_size = 1  # type: ignore[misc]


# -- the views ------------------------------------------------------------


def test_a_view_is_exactly_object_size_writable_bytes() -> None:
    cache = SlabCache(100, objects_per_slab=3)
    view = cache.alloc()
    assert isinstance(view, memoryview)
    assert len(view) == view.nbytes == 100
    assert view.format == "B" and view.ndim == 1 and view.contiguous
    assert not view.readonly
    view[:] = bytes(range(100))
    assert view.tobytes() == bytes(range(100))


def test_the_views_of_a_slab_are_adjacent_slices_of_one_block() -> None:
    cache = SlabCache(64, objects_per_slab=4)
    views = take(cache, 4)
    block = views[0].obj
    assert isinstance(block, bytearray) and len(block) == 4 * 64
    assert all(v.obj is block for v in views)
    base = address(block)
    assert [address(v) - base for v in views] == [0, 64, 128, 192]
    views[2][:3] = b"abc"
    assert block[128:131] == b"abc"


def test_each_slot_has_one_view_reused_for_every_allocation() -> None:
    cache = SlabCache(64, objects_per_slab=2)
    first = cache.alloc()
    assert first is not None
    cache.free(first)
    assert cache.alloc() is first


def test_a_freed_buffer_is_not_zeroed() -> None:
    cache = SlabCache(16, objects_per_slab=1)
    view = take(cache, 1)[0]
    view[:4] = b"keep"
    cache.free(view)
    assert take(cache, 1)[0][:4].tobytes() == b"keep"


# -- the free list --------------------------------------------------------


def test_reuse_is_most_recently_freed_first() -> None:
    cache = SlabCache(32, objects_per_slab=4)
    a, b, c = take(cache, 3)
    cache.free(a)
    cache.free(c)
    assert cache.alloc() is c
    assert cache.alloc() is a
    d = cache.alloc()
    assert d is not None and all(d is not v for v in (a, b, c))


def test_a_new_slab_hands_out_its_slots_in_order() -> None:
    cache = SlabCache(32, objects_per_slab=3)
    views = take(cache, 3)
    base = address(views[0].obj)
    assert [address(v) - base for v in views] == [0, 32, 64]


def test_it_grows_by_whole_slabs_only_when_nothing_is_free() -> None:
    cache = SlabCache(32, objects_per_slab=3)
    assert cache.stats().slabs == 0
    views = take(cache, 3)
    assert cache.stats().slabs == 1
    cache.free(views.pop())
    views += take(cache, 1)
    assert cache.stats().slabs == 1
    views += take(cache, 1)
    stats = cache.stats()
    assert stats.slabs == 2 and stats.bytes_reserved == 6 * 32
    assert stats.objects_in_use == 4 and stats.objects_free == 2
    assert views[-1].obj is not views[0].obj


# -- limit and headroom ---------------------------------------------------


def test_max_objects_gives_none_to_ordinary_masks() -> None:
    cache = SlabCache(32, max_objects=3, headroom=2)
    take(cache, 3)
    for mask in (GFP_KERNEL, GFP_NOWAIT, GFP.NOWARN, int(GFP_KERNEL)):
        assert cache.alloc(mask) is None
    assert cache.stats().alloc_failures == 4


@pytest.mark.parametrize(
    "mask", [GFP_ATOMIC, GFP_KERNEL | GFP.HIGH, GFP.HIGH | GFP.NOWARN, int(GFP.HIGH)]
)
def test_gfp_high_may_use_the_headroom_and_no_more(mask: GFP | int) -> None:
    cache = SlabCache(32, max_objects=3, headroom=2)
    take(cache, 3)
    assert cache.alloc(mask) is not None
    assert cache.alloc(mask) is not None
    assert cache.alloc(mask) is None
    assert cache.stats().objects_in_use == 5


def test_over_the_limit_a_free_object_still_goes_to_gfp_high_only() -> None:
    cache = SlabCache(32, max_objects=3, headroom=2)
    views = take(cache, 3) + take(cache, 2, GFP_ATOMIC)
    cache.free(views.pop())  # 4 out, max_objects 3
    assert cache.alloc(GFP_KERNEL) is None
    assert cache.alloc(GFP_ATOMIC) is not None
    cache.free(views.pop())
    cache.free(views.pop())  # 3 out
    assert cache.alloc(GFP_NOWAIT) is None
    cache.free(views.pop())  # 2 out
    assert cache.alloc(GFP_NOWAIT) is not None


def test_without_max_objects_there_is_no_headroom_and_no_limit() -> None:
    cache = SlabCache(16, objects_per_slab=2)
    take(cache, 50, GFP_NOWAIT)
    assert cache.stats().slabs == 25


def test_memory_is_bounded_by_max_objects_plus_headroom() -> None:
    cache = SlabCache(128, objects_per_slab=4, max_objects=9, headroom=2)
    views = take(cache, 9) + take(cache, 2, GFP_ATOMIC)
    assert cache.alloc(GFP_ATOMIC) is None
    stats = cache.stats()
    assert stats.bytes_reserved == 11 * 128 and stats.slabs == 3
    blocks = {id(v.obj): memoryview(v.obj).nbytes for v in views}
    assert sorted(blocks.values()) == [3 * 128, 4 * 128, 4 * 128]  # last is smaller


def test_the_cache_never_waits_whatever_the_mask() -> None:
    cache = SlabCache(16, max_objects=1, headroom=0)
    take(cache, 1)
    assert cache.alloc(GFP_KERNEL) is None  # DIRECT_RECLAIM: still no wait


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (GFP.ZERO, ValueError, r"GFP\.ZERO"),
        (0x100, ValueError, "bits outside GFP"),
        (True, TypeError, "gfp_mask must be a GFP flag or an int"),
        (1.0, TypeError, "gfp_mask must be a GFP flag or an int"),
    ],
)
def test_a_bad_mask_raises_what_decode_mask_raises(
    mask: Any, error: type, match: str
) -> None:
    cache = SlabCache(16, objects_per_slab=2)
    take(cache, 1)  # something free: the common case checks the mask too
    with pytest.raises(error, match=match):
        cache.alloc(mask)
    assert cache.stats().allocs == 1


def test_a_slab_that_cannot_be_made_gives_none() -> None:
    for page_aligned in (False, True):
        cache = SlabCache(1 << 62, objects_per_slab=1, page_aligned=page_aligned)
        assert cache.alloc() is None
        stats = cache.stats()
        assert stats.slabs == 0 and stats.alloc_failures == 1


# -- refused frees --------------------------------------------------------


def test_a_double_free_is_refused_naming_cache_element_and_slot() -> None:
    cache = SlabCache(16, objects_per_slab=3, name="rx")
    _, b = take(cache, 2)
    cache.free(b)
    with pytest.raises(DoubleFreeError) as info:
        cache.free(b)
    message = str(info.value)
    assert "<SlabCache 'rx'" in message and repr(b) in message
    assert "slab 0, slot 1" in message
    assert cache.stats().frees == 1 and cache.stats().objects_free == 2


def test_a_double_free_names_the_right_slab() -> None:
    cache = SlabCache(16, objects_per_slab=2)
    views = take(cache, 4)
    cache.free(views[3])
    with pytest.raises(DoubleFreeError, match="slab 1, slot 1"):
        cache.free(views[3])


@pytest.mark.parametrize(
    "make",
    [
        lambda v: memoryview(bytearray(16)),
        lambda v: SlabCache(16).alloc(),
        lambda v: bytearray(v),
        lambda v: None,
    ],
    ids=["bytearray", "other-cache", "copy", "None"],
)
def test_a_foreign_element_is_refused(make: Any) -> None:
    cache = SlabCache(16, objects_per_slab=2, name="rx")
    view = take(cache, 1)[0]
    stranger = make(view)
    before = cache.stats()
    with pytest.raises(ForeignElementError) as info:
        cache.free(stranger)
    message = str(info.value)
    shown = (
        f"<bytearray of 16 bytes at {id(stranger):#x}>"
        if isinstance(stranger, bytearray)
        else repr(stranger)
    )
    assert "<SlabCache 'rx'" in message and shown in message
    assert "not a buffer handed out by this cache (a slice or a copy?)" in message
    assert cache.stats() == before


def test_a_refused_free_never_puts_the_elements_bytes_in_the_message() -> None:
    cache = SlabCache(16, objects_per_slab=2)
    big = bytearray(b"secret!" * 10_000)
    with pytest.raises(ForeignElementError) as info:
        cache.free(big)  # type: ignore[arg-type]
    assert len(str(info.value)) < 300
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    "cut", [lambda v: v[0:8], lambda v: v[:], lambda v: memoryview(v)]
)
def test_a_slice_of_a_view_is_foreign_and_changes_nothing(cut: Any) -> None:
    cache = SlabCache(16, objects_per_slab=2)
    view = take(cache, 1)[0]
    piece = cut(view)
    assert piece.obj is view.obj
    with pytest.raises(ForeignElementError, match=r"a slice or a copy\?\).*of slab 0"):
        cache.free(piece)
    assert cache.stats().objects_in_use == 1
    cache.free(view)  # the view itself is still out, and goes back
    assert cache.stats().objects_in_use == 0


def test_owns_knows_its_views_and_nothing_else() -> None:
    cache = SlabCache(16, objects_per_slab=2)
    out, free = take(cache, 2)
    cache.free(free)
    assert cache.owns(out) and cache.owns(free)
    assert not cache.owns(out[:])
    assert not cache.owns(memoryview(out))
    assert not cache.owns(bytes(out))
    assert not cache.owns(SlabCache(16).alloc())
    assert not cache.owns(None)


# -- shrink ---------------------------------------------------------------


def test_shrink_gives_back_the_slabs_with_nothing_out() -> None:
    cache = SlabCache(16, objects_per_slab=2)
    a, b, _, d, _ = take(cache, 5)
    for view in (a, b, d):
        cache.free(view)
    # slab 0: both free; slab 1: c out, d free; slab 2: e out, one never used.
    assert cache.shrink() == 1
    stats = cache.stats()
    assert stats.slabs == 2 and stats.objects_free == 2 and stats.objects_in_use == 2
    assert not cache.owns(a) and cache.owns(d)
    with pytest.raises(ValueError, match="released"):
        a[0]  # the slab is gone: its views with it
    assert cache.shrink() == 0
    assert cache.alloc() is d  # the free list kept its order


def test_shrink_of_a_freed_view_then_free_again_is_foreign() -> None:
    cache = SlabCache(16, objects_per_slab=1)
    view = take(cache, 1)[0]
    cache.free(view)
    cache.shrink()
    with pytest.raises(ForeignElementError, match="released"):
        cache.free(view)


def test_after_shrink_the_cache_grows_again() -> None:
    cache = SlabCache(16, objects_per_slab=2)
    for view in take(cache, 4):
        cache.free(view)
    assert cache.shrink() == 2
    assert cache.stats().bytes_reserved == 0
    take(cache, 3)
    assert cache.stats().slabs == 2


def test_shrink_survives_a_slice_the_user_kept() -> None:
    for size, page_aligned in ((16, False), (mmap.PAGESIZE, True)):
        cache = SlabCache(size, objects_per_slab=1, page_aligned=page_aligned)
        view = take(cache, 1)[0]
        kept = view[:4]
        cache.free(view)
        assert cache.shrink() == 1
        kept[:4] = b"safe"  # the memory lives as long as the slice does
        assert kept.tobytes() == b"safe"


# -- close ----------------------------------------------------------------


def test_close_gives_every_slab_back_and_refuses_alloc() -> None:
    cache = SlabCache(16, objects_per_slab=2, name="rx")
    for view in take(cache, 3):
        cache.free(view)
    cache.close()
    assert cache.stats().slabs == 0 and cache.stats().bytes_reserved == 0
    for mask in (GFP_KERNEL, GFP_NOWAIT, GFP_ATOMIC):
        with pytest.raises(PoolClosedError, match="closed"):
            cache.alloc(mask)
    cache.close()  # idempotent
    assert repr(cache).startswith("<SlabCache 'rx' closed")


def test_a_slab_with_objects_out_goes_when_the_last_one_returns() -> None:
    cache = SlabCache(16, objects_per_slab=2)
    a, b, c = take(cache, 3)
    cache.free(b)
    cache.close()
    assert cache.stats().slabs == 2
    with pytest.raises(PoolClosedError):
        cache.alloc()  # b is free, but not for handing out
    a[:2] = b"ok"  # still valid
    cache.free(a)
    assert cache.stats().slabs == 1
    with pytest.raises(ValueError, match="released"):
        a[0]
    cache.free(c)
    assert cache.stats().slabs == 0 and cache.stats().frees == 3


# -- page alignment -------------------------------------------------------


def test_page_aligned_slabs_are_mmaps_and_every_view_starts_a_page() -> None:
    page = mmap.PAGESIZE
    cache = SlabCache(2 * page, objects_per_slab=3, page_aligned=True)
    views = take(cache, 4)
    assert all(isinstance(v.obj, mmap.mmap) for v in views)
    assert all(address(v) % page == 0 for v in views)
    views[1][:] = b"\xab" * (2 * page)
    block = views[1].obj
    assert isinstance(block, mmap.mmap)
    assert block[2 * page : 4 * page] == b"\xab" * (2 * page)


def test_shrink_closes_the_mmap() -> None:
    cache = SlabCache(mmap.PAGESIZE, objects_per_slab=2, page_aligned=True)
    view = take(cache, 1)[0]
    block = view.obj
    assert isinstance(block, mmap.mmap)
    cache.free(view)
    del view
    assert cache.shrink() == 1
    assert block.closed


def test_page_aligned_needs_a_multiple_of_the_page_size() -> None:
    with pytest.raises(ValueError, match=r"object_size must be a multiple of mmap"):
        SlabCache(mmap.PAGESIZE + 1, page_aligned=True)


# -- arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"object_size": 0}, ValueError, "object_size must be >= 1"),
        ({"object_size": 1.5}, TypeError, "object_size must be an int"),
        ({"object_size": True}, TypeError, "object_size must be an int"),
        ({"objects_per_slab": 0}, ValueError, "objects_per_slab must be >= 1"),
        ({"objects_per_slab": "2"}, TypeError, "objects_per_slab must be an int"),
        ({"max_objects": -1}, ValueError, "max_objects must be >= 1"),
        ({"max_objects": 2.0}, TypeError, "max_objects must be an int"),
        ({"max_objects": 4, "headroom": -1}, ValueError, "headroom must be >= 0"),
        ({"max_objects": 4, "headroom": 1.0}, TypeError, "headroom must be an int"),
        ({"headroom": 2}, ValueError, "headroom needs max_objects"),
        ({"page_aligned": 1}, TypeError, "page_aligned must be a bool"),
        ({"name": 3}, TypeError, "name must be a str or None"),
    ],
)
def test_bad_arguments_are_refused_naming_the_rule(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    kwargs = {"object_size": 64, **kwargs}
    with pytest.raises(error, match=match):
        SlabCache(**kwargs)


def test_headroom_zero_without_max_objects_is_fine() -> None:
    assert SlabCache(64, headroom=0).headroom == 0


# -- stats and repr -------------------------------------------------------


def test_stats_count_everything() -> None:
    cache = SlabCache(16, objects_per_slab=2, max_objects=3, headroom=1, name="s")
    views = take(cache, 3)
    assert cache.alloc(GFP_NOWAIT) is None
    cache.free(views.pop())
    cache.free(views.pop())
    take(cache, 1)
    assert cache.stats() == SlabStats(
        name="s",
        object_size=16,
        slabs=2,
        objects_in_use=2,
        objects_free=2,
        bytes_reserved=4 * 16,
        high_water=3,
        allocs=4,
        frees=2,
        alloc_failures=1,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cache.stats().allocs = 0  # type: ignore[misc]


def test_high_water_remembers_the_most_out_at_once() -> None:
    cache = SlabCache(16, objects_per_slab=4)
    views = take(cache, 5)
    for view in views:
        cache.free(view)
    take(cache, 2)
    assert cache.stats().high_water == 5


def test_repr_shows_live_state() -> None:
    cache = SlabCache(65536, name="rx")
    take(cache, 3)
    assert repr(cache) == "<SlabCache 'rx' object_size=65536 in_use=3 free=13 slabs=1>"
    assert repr(SlabCache(8)) == "<SlabCache object_size=8 in_use=0 free=0 slabs=0>"


# -- the mempool callbacks ------------------------------------------------


def test_alloc_and_free_serve_as_a_mempools_callbacks() -> None:
    cache = SlabCache(16, objects_per_slab=4, max_objects=3, headroom=0)
    pool = Mempool(1, cache.alloc, cache.free, "data")
    assert cache.stats().objects_in_use == 1  # the reserve
    view = pool.alloc_nowait()
    assert view is not None and cache.owns(view)
    assert cache.stats().objects_in_use == 2
    pool.free(view)  # the reserve is full: back to the cache
    assert cache.stats().objects_in_use == 1 and cache.alloc() is view
    cache.free(view)
    pool.close()
    assert cache.stats().objects_in_use == 0


def test_objects_lent_to_a_mempools_reserve_count_as_out() -> None:
    cache = SlabCache(16, objects_per_slab=4, max_objects=3, headroom=0)
    pool = Mempool(2, cache.alloc, cache.free)
    assert cache.stats().objects_in_use == 2
    assert pool.alloc_nowait() is not None  # from the cache: 3 out
    assert cache.alloc() is None
    pool.close()  # the reserve goes back to the cache
    assert cache.stats().objects_in_use == 1


def test_frees_after_close_cost_o1_each_not_a_rescan_of_the_cache() -> None:
    """A shrink() per free after close() walked the whole free list each
    time: 10,000 buffers freed at shutdown took seconds. Count the walks."""

    class CountingList(list):  # type: ignore[type-arg]
        walks = 0

        def __iter__(self) -> Any:
            CountingList.walks += 1
            return super().__iter__()

    cache = SlabCache(16, objects_per_slab=8)
    out = take(cache, 2000)
    for view in out[::2]:
        cache.free(view)  # half of every slab free: no slab can go yet
    cache._free = CountingList(cache._free)
    cache.close()
    walks_at_close = CountingList.walks
    assert cache.stats().slabs == 250
    rest = out[1::2]
    random.Random(5).shuffle(rest)
    for i, view in enumerate(rest):
        cache.free(view)
        assert cache.stats().objects_in_use == len(rest) - i - 1
    assert CountingList.walks == walks_at_close  # no walk per free
    assert cache.stats().slabs == 0
    assert cache.stats().bytes_reserved == 0
    assert cache.stats().objects_free == 0


def test_after_close_a_double_free_is_still_refused() -> None:
    cache = SlabCache(16, objects_per_slab=4)
    a, b = take(cache, 2)
    cache.close()
    cache.free(a)
    with pytest.raises(DoubleFreeError, match="not out"):
        cache.free(a)
    assert cache.stats().objects_in_use == 1
    cache.free(b)
    assert cache.stats().slabs == 0
