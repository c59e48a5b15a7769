"""A file laid out as the kernel lays out a BPF ring buffer map (consumer page,
producer page, data area twice), written the way the programs write it."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

PAGE = mmap.PAGESIZE
SIZE = 4096  # data area
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    def __init__(self, path: Path, size: int = SIZE) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, 2 * PAGE + 2 * size)
        self.size = size
        self.data = bytearray(size)
        self.prod = 0

    def write(self, payload: bytes, flags: int = 0) -> int:
        """Appends a record; returns where it starts."""
        start = self.prod
        record = struct.pack("<II", len(payload) | flags, 0) + payload
        record += b"\0" * (-len(record) % 8)
        for i, byte in enumerate(record):
            self.data[(start + i) % self.size] = byte
        self.prod += len(record)
        self._publish()
        return start

    def submit(self, start: int, length: int) -> None:
        """The program submits a reserved record: its header loses the BUSY bit."""
        self.data[start % self.size : start % self.size + 4] = struct.pack("<I", length)
        self._publish()

    def _publish(self) -> None:
        os.pwrite(self.fd, bytes(self.data) * 2, 2 * PAGE)  # the area mapped twice in a row
        os.pwrite(self.fd, struct.pack("<Q", self.prod), PAGE)

    def consumer(self) -> int:
        return int(struct.unpack("<Q", os.pread(self.fd, 8, 0))[0])
