"""The cycle collector's settings once the collector is ready."""

from __future__ import annotations

import gc
import weakref

from otel_ebpf.memory import HEAP_TOP_PAD, YOUNG_COLLECTION_EVERY, keep_heap_top, settle_heap


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


def test_the_c_heaps_keep_their_top_pad() -> None:
    assert keep_heap_top(HEAP_TOP_PAD)  # glibc accepts it (these machines' C library)
