"""The wall clock set on the real kernel (an agent on these VMs stepped it 5 ms
every second during a run): the collector's watcher reads it at that moment,
not at the next drain, so a time between the set and the drain is mapped by
the clock after the set. The clock is stepped 20 ms forward, then back."""

from __future__ import annotations

import time

import pytest

from harness import wait_until
from otel_ebpf.processors.wall_clock import WallClock

pytestmark = pytest.mark.kernel

STEP_NS = 20_000_000


def test_a_time_after_the_clock_was_set_takes_the_offset_after_it() -> None:
    clock = WallClock()
    assert clock.watch_steps()
    before = clock.epoch(time.monotonic_ns()) - time.monotonic_ns()
    time.clock_settime_ns(time.CLOCK_REALTIME, time.time_ns() + STEP_NS)
    try:
        # the watcher's read, which the next drain's sample takes first
        wait_until(lambda: len(clock._set_at) > 0, 5, "the watcher to see the set")
        watched_at = clock._set_at[0][0]
        time.sleep(0.05)
        assert clock.sample() >= STEP_NS - 1_000_000
        between = watched_at + 1  # after the set, before the drain's own read
        assert clock.epoch(between) - between - before >= STEP_NS - 1_000_000
    finally:
        time.clock_settime_ns(time.CLOCK_REALTIME, time.time_ns() - STEP_NS)
