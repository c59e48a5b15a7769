"""A BPF ring buffer read in batches from its memory mapping.

bcc hands each record to Python through a ctypes callback (a GIL re-take and
argument conversion per record), and libbpf's consumer keeps going while the
kernel keeps writing, so under steady load the poll never returned and the
collector's periodic work (held spans, telemetry, expiry) starved. Here the
records up to the producer position read at the start of a drain are copied
out in one loop and the consumer position is written once: a drain is bounded
and costs a slice per record.

The layout is the kernel's (kernel/bpf/ringbuf.c): a consumer page user space
writes, a producer page it reads, then the data area mapped twice in a row so
a record that wraps is contiguous. Each record starts with an 8-byte header
(length with BUSY and DISCARD bits, page offset) and is padded to 8 bytes.

Reading the header before the record is an ordering libbpf gets from
`smp_load_acquire`; Python has no such load, so this reader is used where the
CPU keeps loads in order (x86-64); elsewhere the receiver uses libbpf's.
"""

from __future__ import annotations

import mmap
import platform
from typing import Final

_BUSY: Final = 1 << 31  # reserved, not yet submitted: the drain stops there
_DISCARD: Final = 1 << 30  # reserved and dropped by the program: skipped
_HEADER: Final = 8
MAX_RECORD: Final = 64 << 10  # longer than any record the programs write (under 17 KiB)

# CPUs whose loads are not reordered with other loads (total store order).
ORDERED_LOADS: Final = platform.machine().lower() in ("x86_64", "amd64")

# The kernel writes records without waking the collector (a wakeup costs the
# traced thread ~1.4 us); they are drained this often. 8 MiB of ring buffer
# hold ~5,000 records per 10 ms even at full 1 KiB captures.
DRAIN_INTERVAL_S: Final = 0.01
# A quiet node's drains stretch to this: each wakeup costs the collector ~40 us
# however little it finds. The kernel sheds at half the ring unread, ~3,500
# full records, so even from here a burst of 80,000 records/s is read in time.
QUIET_DRAIN_INTERVAL_S: Final = 0.04
QUIET_RECORDS_PER_S: Final = 2000  # below this the drains stretch; at or above, every 10 ms


def next_drain_wait(wait_s: float, records: int, since_last_s: float) -> float:
    """The wait before the next drain, from what the last one read over the time
    since the one before: every 10 ms while records come at QUIET_RECORDS_PER_S
    or more, else twice the last wait, up to QUIET_DRAIN_INTERVAL_S."""
    if records >= QUIET_RECORDS_PER_S * max(since_last_s, DRAIN_INTERVAL_S):
        return DRAIN_INTERVAL_S
    return min(wait_s * 2, QUIET_DRAIN_INTERVAL_S)


class RingBufferReader:
    """Copies records out of a BPF_MAP_TYPE_RINGBUF map given its fd and data size."""

    def __init__(self, map_fd: int, data_size: int) -> None:
        if data_size <= 0 or data_size & (data_size - 1):
            raise ValueError(f"ring buffer size {data_size} is not a power of two")
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        # The producer page and the data area, plus as much of its second copy as
        # the longest record can run into (the kernel populates what is mapped).
        tail = min(data_size, MAX_RECORD)
        self._ring = mmap.mmap(
            map_fd, page + data_size + tail, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data_start = page  # in self._ring: the producer page comes first
        self._mask = data_size - 1
        # Positions and headers are read, and the consumer position written, as
        # native words through typed views: an index is one load, where a
        # struct call per record cost more than the copy of the record itself.
        self._consumer_position = memoryview(self._consumer).cast("Q")
        self._ring_words = memoryview(self._ring).cast("I")
        self._producer_position = memoryview(self._ring).cast("Q")

    def consumed(self) -> int:
        """The consumer position: bytes read since the ring was made, headers and
        padding counted (as the kernel's producer position counts them)."""
        cons: int = self._consumer_position[0]
        return cons

    def drain(self, limit: int) -> list[bytes]:
        """Up to `limit` records, oldest first; stops at a record still being written."""
        ring, words, start, mask = self._ring, self._ring_words, self._data_start, self._mask
        cons: int = self._consumer_position[0]
        prod: int = self._producer_position[0]
        out: list[bytes] = []
        while cons < prod and len(out) < limit:
            at = start + (cons & mask)
            length: int = words[at >> 2]  # records are 8-byte aligned
            if length & _BUSY:
                break
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                out.append(ring[at + _HEADER : at + _HEADER + size])
            cons += (size + _HEADER + 7) & ~7
        self._consumer_position[0] = cons  # the kernel may reuse that space now
        return out

    def close(self) -> None:
        for view in (self._consumer_position, self._ring_words, self._producer_position):
            view.release()  # a mapping with views on it cannot be closed
        self._consumer.close()
        self._ring.close()
