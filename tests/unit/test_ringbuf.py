"""The ring buffer reader on a file laid out as the kernel lays out the map
(consumer page, producer page, data area twice): records, padding, a record
still being written, a discarded one, a record across the wrap, the batch limit."""

from __future__ import annotations

from pathlib import Path

from fake_ring import BUSY, DISCARD, SIZE, FakeRing
from otel_ebpf.receivers.ringbuf import RingBufferReader


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
