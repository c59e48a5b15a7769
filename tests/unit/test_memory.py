"""The cycle collector's settings once the collector is ready."""

from __future__ import annotations

import ctypes
import gc
import weakref

from otel_ebpf.memory import (
    HEAP_BLOCKS_BELOW,
    YOUNG_COLLECTION_EVERY,
    keep_heap_top,
    settle_heap,
    trim_heap,
)


class _Node:
    other: object = None


def test_once_settled_start_up_is_frozen_and_a_later_cycle_is_still_collected() -> None:
    saved = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
        assert gc.get_threshold()[1:] == saved[1:]
        assert gc.get_freeze_count() > 0  # start-up's objects, out of the walk
        node = _Node()
        node.other = node  # garbage only a collection frees
        gone = weakref.ref(node)
        del node
        # Past the young generation's threshold with objects made (and kept)
        # after it, as the event path's records are: a young collection runs.
        kept = [[] for _ in range(2 * YOUNG_COLLECTION_EVERY)]
        assert gone() is None
        del kept
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33+): `hblks` counts blocks in mappings of their own."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mapped_blocks() -> int:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().hblks)


def test_the_c_heaps_keep_their_top_and_serve_blocks_below_a_mebibyte() -> None:
    assert keep_heap_top()  # glibc accepts both (these machines' C library)
    trim_heap()  # no free room at the heap's top: the block below is a new one
    before = _mapped_blocks()
    block = bytearray(HEAP_BLOCKS_BELOW // 2)  # an export request's size: from the heap
    assert _mapped_blocks() == before
    del block
