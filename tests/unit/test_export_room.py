"""A full export queue waits a moment for its exporter, then drops at once."""

from __future__ import annotations

from collections import deque

from otel_ebpf.export_room import QueueRoom


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def full_queue(limit: int = 4) -> deque[object]:
    return deque(range(limit), maxlen=limit)


def test_room_in_a_queue_not_full_costs_no_wait() -> None:
    clock = Clock()
    room = QueueRoom(deque(maxlen=4), sleep=lambda s: None, clock=clock)
    assert room()
    assert room.waited_s == 0


def test_a_full_queue_waits_for_the_exporter_to_take_a_batch() -> None:
    pending, clock = full_queue(), Clock()

    def exporter_runs(seconds: float) -> None:
        clock.now += seconds
        if clock.now >= 0.01:  # the exporter thread got the CPU and took a batch
            pending.clear()

    room = QueueRoom(pending, wait_s=0.25, sleep=exporter_runs, clock=clock)
    assert room()
    assert 0.009 < room.waited_s < 0.02


def test_an_exporter_that_takes_nothing_holds_the_collector_once_only() -> None:
    pending, clock = full_queue(), Clock()
    sleeps: list[float] = []

    def nothing_moves(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    room = QueueRoom(pending, wait_s=0.25, sleep=nothing_moves, clock=clock)
    assert not room()
    waited = room.waited_s
    assert 0.25 <= waited < 0.26
    calls = len(sleeps)
    assert not room() and not room()  # dropped at once while it stays full
    assert len(sleeps) == calls and room.waited_s == waited
    pending.pop()  # the exporter took one: the next full queue is waited for again
    assert room()
    pending.append(0)
    assert not room()
    assert room.waited_s >= 2 * 0.25
