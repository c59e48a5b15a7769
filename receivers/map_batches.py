"""A BPF hash map read in chunks, into buffers kept from one read to the next.

bcc's `items_lookup_batch` allocates and zeroes keys and values for the map's
whole capacity at every call: for the connection table (65,536 entries) 8 MiB
faulted in and unmapped once a second, about 60 % of an idle collector's CPU.
Here each BPF_MAP_LOOKUP_BATCH call fills buffers of `chunk` entries made once,
and the kernel's position token carries the walk from one call to the next.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from typing import Any

CHUNK = 1024  # entries a call reads (connections: 8 KiB of keys, ~130 KiB of states)


class MapBatches:
    """Every entry of one map, `chunk` at a time. A value yielded lives in the
    buffer: read it before asking for the next entry."""

    def __init__(
        self, library: str, map_fd: int, key_type: Any, value_type: Any, chunk: int = CHUNK
    ) -> None:
        self._lookup_batch = ctypes.CDLL(library, use_errno=True).bpf_lookup_batch
        self._lookup_batch.restype = ctypes.c_int
        self._lookup_batch.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 5]
        self._fd = map_fd
        self._chunk = chunk
        self._keys = (key_type * chunk)()
        self._values = (value_type * chunk)()

    def entries(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs; OSError where the kernel cannot batch (before Linux
        5.6) or refuses a call."""
        token = ctypes.c_uint32(0)  # where the walk stands (the kernel's, opaque)
        count = ctypes.c_uint32(0)
        keys, values = ctypes.byref(self._keys), ctypes.byref(self._values)
        at = None  # the first call starts the walk
        while True:
            count.value = self._chunk
            failed = self._lookup_batch(
                self._fd, at, ctypes.byref(token), keys, values, ctypes.byref(count)
            )
            code = ctypes.get_errno()
            for i in range(count.value):
                yield self._keys[i], self._values[i]
            if failed:
                if code == errno.ENOENT:
                    return  # the walk is done (its last entries came with it)
                raise OSError(code, os.strerror(code))
            if count.value == 0:
                return
            at = ctypes.byref(token)
