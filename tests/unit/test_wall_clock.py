"""Kernel times on the wall clock as it read at their moment, while it steps
(processors/wall_clock.py), on a clock pair the test moves."""

from __future__ import annotations

import errno
import os
import time

import pytest

from otel_ebpf.processors.wall_clock import WallClock

MS = 1_000_000


class Clocks:
    """time.monotonic_ns and time.time_ns, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mono, self.offset = 1_000 * MS, 1_700_000_000_000 * MS
        monkeypatch.setattr(time, "monotonic_ns", lambda: self.mono)
        monkeypatch.setattr(time, "time_ns", lambda: self.mono + self.offset)

    def run(self, ns: int, stepped: int = 0) -> None:
        self.mono += ns
        self.offset += stepped


def test_a_fixed_offset_stays() -> None:
    clock = WallClock(fixed=10)
    assert clock.sample() == 0
    assert clock.epoch(5) == 15


def test_a_time_takes_the_offset_of_the_last_sample_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clocks = Clocks(monkeypatch)
    clock = WallClock()
    start, offset = clocks.mono, clocks.offset
    clocks.run(10 * MS)
    assert clock.sample() == 0  # nothing moved
    clocks.run(10 * MS, stepped=50 * MS)
    assert clock.sample() == 50 * MS  # a step: reported
    stepped_at = clocks.mono
    clocks.run(10 * MS, stepped=-30 * MS)
    assert clock.sample() == -30 * MS
    assert clock.epoch(start - MS) == start - MS + offset  # before the first: the first's
    assert clock.epoch(stepped_at - 1) == stepped_at - 1 + offset
    assert clock.epoch(stepped_at) == stepped_at + offset + 50 * MS
    assert clock.epoch(clocks.mono + MS) == clocks.mono + MS + offset + 20 * MS


def test_a_time_maps_alike_whichever_span_is_built_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock stepped 5 ms every second (an agent on these VMs did): a child
    converted before the step was sampled and its parent after agree."""
    clocks = Clocks(monkeypatch)
    clock = WallClock()
    parent_start = clocks.mono + 2 * MS
    clocks.run(5 * MS)
    child_start = clocks.mono
    early = clock.epoch(child_start)  # the child's span, built first
    clocks.run(3 * MS, stepped=5 * MS)  # the step, sampled at the next drain
    clocks.run(7 * MS)
    assert clock.sample() == 5 * MS
    assert clock.epoch(child_start) == early  # the same, converted again
    assert clock.epoch(parent_start) < early  # the parent, built now, still starts first
    for _ in range(100):  # steps under the reported size: followed quietly
        clocks.run(10 * MS, stepped=50_000)
        assert clock.sample() == 0
    assert clock.epoch(clocks.mono) == clocks.mono + clocks.offset


def test_jitter_adds_no_sample_and_a_preempted_read_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clocks = Clocks(monkeypatch)
    clock = WallClock()
    clocks.run(10 * MS, stepped=3_000)  # the reads' own jitter
    assert clock.sample() == 0
    assert clock.epoch(clocks.mono) == clocks.mono + clocks.offset - 3_000
    reads = iter([clocks.mono, clocks.mono + 5 * MS])  # preempted between the reads
    monkeypatch.setattr(time, "monotonic_ns", lambda: next(reads))
    clocks.offset += 80 * MS
    assert clock.sample() == 0


def test_the_watcher_hands_over_what_it_read_when_the_clock_was_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its read ends in ECANCELED at every set (timerfd's TFD_TIMER_CANCEL_ON_SET);
    any other error ends the thread."""
    clocks = Clocks(monkeypatch)
    clock = WallClock()
    clocks.run(10 * MS)
    results = iter([errno.ECANCELED, errno.EBADF])

    def read(fd: int, n: int) -> bytes:
        clocks.run(MS, stepped=20 * MS)
        raise OSError(next(results), "")

    monkeypatch.setattr(os, "read", read)
    clock._watch(os.open(os.devnull, os.O_RDONLY))  # returns at EBADF
    set_at = clocks.mono - MS  # read at the first set, a millisecond before the second
    clocks.run(5 * MS)
    assert clock.sample() == 40 * MS  # both sets: what the watcher read, then now
    assert clock.epoch(set_at) == set_at + clocks.offset - 20 * MS
