"""The ring buffer reader on a file laid out as the kernel lays out the map
(consumer page, producer page, data area twice): records, padding, a record
still being written, a discarded one, a record across the wrap, the batch limit;
and how often the collector drains it."""

from __future__ import annotations

from pathlib import Path

from fake_ring import BUSY, DISCARD, SIZE, FakeRing
from otel_ebpf.receivers.ringbuf import (
    DRAIN_INTERVAL_S,
    QUIET_DRAIN_INTERVAL_S,
    QUIET_RECORDS_PER_S,
    RingBufferReader,
    next_drain_wait,
)


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


def test_drains_stretch_on_a_quiet_node_and_return_at_once_under_load() -> None:
    wait = DRAIN_INTERVAL_S
    waits = []
    for _ in range(4):  # nothing written
        wait = next_drain_wait(wait, 0, wait)
        waits.append(wait)
    assert waits == [0.02, QUIET_DRAIN_INTERVAL_S, QUIET_DRAIN_INTERVAL_S, QUIET_DRAIN_INTERVAL_S]
    # a burst read after the longest wait: the very next drain is at the short interval
    burst = int(QUIET_RECORDS_PER_S * QUIET_DRAIN_INTERVAL_S)
    assert next_drain_wait(wait, burst, QUIET_DRAIN_INTERVAL_S) == DRAIN_INTERVAL_S
    # judged by rate, not count: as many records over a longer time is quiet
    assert next_drain_wait(DRAIN_INTERVAL_S, burst, 1.0) == 2 * DRAIN_INTERVAL_S
    # a drain right after a full batch (no wait between) is judged per 10 ms
    assert next_drain_wait(DRAIN_INTERVAL_S, 4096, 0.0) == DRAIN_INTERVAL_S
