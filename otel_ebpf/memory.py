"""Give back memory the collector no longer uses: what bcc's compiler left behind
once the programs are loaded, and the C heap's free blocks after a burst; and
keep Python's cycle collector from walking what never becomes garbage.

Compiling the BPF programs pulls libLLVM and libclang's code in (80+ MiB of
resident pages here) and leaves the C heap full of freed blocks; the collector
never compiles again. Clean file-backed pages are paged out (`MADV_PAGEOUT`,
Linux 5.4; they come back from the page cache if ever needed) and the heap is
trimmed. Best effort: nothing here can fail the collector.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21
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


def settle_heap() -> None:
    """Called once ready: what start-up made (modules, config, tables) is moved
    where the cycle collector no longer walks it (`gc.freeze`), and young
    collections come every YOUNG_COLLECTION_EVERY objects; the older
    generations keep Python's ratios, so cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)
