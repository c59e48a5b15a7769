"""Give back memory the collector no longer uses: what bcc's compiler left behind
once the programs are loaded, and the C heap's free blocks after a burst; and
keep Python's cycle collector from walking what never becomes garbage.

Compiling the BPF programs pulls libLLVM and libclang's code in (80+ MiB of
resident pages here) and leaves the C heap full of freed blocks; the collector
never compiles again. Clean file-backed pages are paged out (`MADV_PAGEOUT`,
Linux 5.4; they come back from the page cache if ever needed) and the heap is
trimmed. What a thread frees and soon needs again stays: a few MiB at each
heap's top, where shrinking and growing cost page faults per batch of spans.
Best effort: nothing here can fail the collector.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21
M_TOP_PAD = -2  # glibc's mallopt: free memory a C heap keeps at its top when it shrinks
M_MMAP_THRESHOLD = -3  # glibc's mallopt: blocks this large or larger get mappings of their own
# Kept at each C heap's top (glibc's default: 128 KiB). The export thread encodes
# a batch of spans into fresh buffers several times a second; at the default its
# heap shrank after each batch and the next faulted the pages back in: 0.8 page
# faults and ~2 µs of system time a request with a span per request. At most this
# much a thread's heap stays resident; the periodic trim (trim_heap) still empties it.
HEAP_TOP_PAD = 4 << 20
# Blocks below this come from the heaps, larger ones get mappings of their own.
# Setting the pad fixes glibc's threshold at 128 KiB (it no longer adapts), and
# each batch's export request (a few hundred KiB for 512 spans), mapped and
# unmapped, faulted in page by page again: 0.9 faults and ~1.5 µs of the export
# thread a request. At 4 MiB the heaps of a collector exporting a span for every
# saturating request held ~10 MiB more; at 1 MiB they hold what they did.
HEAP_BLOCKS_BELOW = 1 << 20
# New container objects between two young collections (Python's default: 700).
# The event path makes and drops objects by the thousand a second, almost none
# in cycles: at 700, collections took ~3 µs a request and found next to nothing.
YOUNG_COLLECTION_EVERY = 50_000
_COMPILER_LIBRARIES = ("libLLVM", "libclang")


def release_compiler_memory(maps_path: str = "/proc/self/maps") -> None:
    """Pages out the compiler libraries' clean pages, then trims the heap."""
    try:
        madvise = ctypes.CDLL(None).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open(maps_path) as maps:
            lines = maps.read().splitlines()
        for line in lines:
            fields = line.split()
            if len(fields) < 6 or not fields[5].rsplit("/", 1)[-1].startswith(_COMPILER_LIBRARIES):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "w" not in fields[1]:  # code and read-only data: clean pages
                madvise(start, end - start, MADV_PAGEOUT)
    except (OSError, AttributeError, ValueError) as exc:
        log.debug("compiler pages not released: %s", exc)
    trim_heap()


def trim_heap() -> None:
    """Free blocks at the C heap's top and in its holes go back to the system
    (a burst's records and spans leave them; glibc keeps them otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError) as exc:
        log.debug("heap not trimmed: %s", exc)


def keep_heap_top(pad: int = HEAP_TOP_PAD, blocks_below: int = HEAP_BLOCKS_BELOW) -> bool:
    """The C heaps keep `pad` free bytes at their top when they shrink, and
    serve blocks smaller than `blocks_below` themselves; False where the C
    library has no such settings (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
        return bool(mallopt(M_TOP_PAD, pad)) and bool(mallopt(M_MMAP_THRESHOLD, blocks_below))
    except (OSError, AttributeError) as exc:
        log.debug("heap top pad and mapping threshold not set: %s", exc)
        return False


def settle_heap() -> None:
    """Called once ready: what start-up made (modules, config, tables) is moved
    where the cycle collector no longer walks it (`gc.freeze`), and young
    collections come every YOUNG_COLLECTION_EVERY objects; the older
    generations keep Python's ratios, so cycles are still collected. The C
    heaps keep HEAP_TOP_PAD at their top and serve blocks below
    HEAP_BLOCKS_BELOW from then on."""
    keep_heap_top()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)
