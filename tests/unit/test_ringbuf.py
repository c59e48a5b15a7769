"""The ring buffer reader on a file laid out as the kernel lays out the map
(consumer page, producer page, data area twice): records, padding, a record
still being written, a discarded one, a record across the wrap, the batch limit."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from otel_ebpf.receivers.ringbuf import RingBufferReader

PAGE = mmap.PAGESIZE
SIZE = 4096  # data area
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, 2 * PAGE + 2 * SIZE)
        self.data = bytearray(SIZE)
        self.prod = 0

    def write(self, payload: bytes, flags: int = 0) -> int:
        """Appends a record; returns where it starts."""
        start = self.prod
        record = struct.pack("<II", len(payload) | flags, 0) + payload
        record += b"\0" * (-len(record) % 8)
        for i, byte in enumerate(record):
            self.data[(start + i) % SIZE] = byte
        self.prod += len(record)
        self._publish()
        return start

    def submit(self, start: int, length: int) -> None:
        """The program submits a reserved record: its header loses the BUSY bit."""
        self.data[start % SIZE : start % SIZE + 4] = struct.pack("<I", length)
        self._publish()

    def _publish(self) -> None:
        os.pwrite(self.fd, bytes(self.data) * 2, 2 * PAGE)  # the area mapped twice in a row
        os.pwrite(self.fd, struct.pack("<Q", self.prod), PAGE)

    def consumer(self) -> int:
        return int(struct.unpack("<Q", os.pread(self.fd, 8, 0))[0])


def test_records_in_order_with_padding_and_discards(tmp_path: Path) -> None:
    ring = FakeRing(tmp_path / "ring")
    reader = RingBufferReader(ring.fd, SIZE)
    ring.write(b"one")
    ring.write(b"dropped by the program", DISCARD)
    ring.write(b"three!!!")
    assert reader.drain(100) == [b"one", b"three!!!"]
    assert ring.consumer() == ring.prod
    assert reader.drain(100) == []


def test_a_record_being_written_stops_the_drain_until_submitted(tmp_path: Path) -> None:
    ring = FakeRing(tmp_path / "ring")
    reader = RingBufferReader(ring.fd, SIZE)
    ring.write(b"ready")
    busy_at = ring.write(b"reserved", BUSY)
    ring.write(b"after")
    assert reader.drain(100) == [b"ready"]
    assert ring.consumer() == busy_at
    ring.submit(busy_at, len(b"reserved"))
    assert reader.drain(100) == [b"reserved", b"after"]


def test_a_record_across_the_end_of_the_area_and_the_batch_limit(tmp_path: Path) -> None:
    ring = FakeRing(tmp_path / "ring")
    reader = RingBufferReader(ring.fd, SIZE)
    filler = b"x" * 1000
    for _ in range(3):
        ring.write(filler)
    assert reader.drain(100) == [filler] * 3
    across = bytes(range(256)) * 5  # starts near the end, wraps to the start
    ring.write(across)
    ring.write(b"next")
    assert reader.drain(1) == [across]
    assert reader.drain(1) == [b"next"]
    assert ring.consumer() == ring.prod
