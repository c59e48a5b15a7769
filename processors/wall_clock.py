"""Kernel times (bpf_ktime_get_ns: CLOCK_MONOTONIC) as Unix times, as the wall
clock read them when they were taken.

The wall clock steps against the monotonic one: set by hand, by a VM resumed,
or by an agent nudging it (one on these VMs stepped it 5 ms every second for
five minutes). A single offset, followed once a second, put every span built
in that second up to 5 ms early against the SDKs' spans stamped with the wall
clock of their moment, and a child built just after the follow took the new
offset while its parent, built just before, kept the old one: out of each
other's time. So the offset is sampled at every drain (10-40 ms), and at the
moment the clock is set (a timerfd the kernel cancels then, watched by a thread
that sleeps otherwise), and a time takes the offset of the last sample at or
before it: its mapping never changes once made, whichever span is built first,
and times keep their order across a step forward.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from bisect import bisect_right
from collections import deque
from typing import Final

from otel_ebpf.processors.clock_set import clock_set_timer

log = logging.getLogger(__name__)

CLOCK_JITTER_NS: Final = 10_000  # a move smaller than this is the two reads' own jitter
CLOCK_STEP_NS: Final = 500_000  # a move this large between two samples is reported
SAMPLES: Final = 1024  # at 10-40 ms a sample while the clock moves: 10-40 s of history


def _read_offset() -> tuple[int, int] | None:
    """(monotonic now, the offset to Unix time), or None where this thread was
    preempted between the reads: no telling then what the wall clock read."""
    before = time.monotonic_ns()
    wall = time.time_ns()
    after = time.monotonic_ns()
    if after - before > CLOCK_JITTER_NS:
        return None
    now = (before + after) // 2
    return now, wall - now


class WallClock:
    """The offset from monotonic to Unix time, sampled over time (`fixed`: one
    offset for good, for tests and replays)."""

    def __init__(self, fixed: int | None = None) -> None:
        self._follows = fixed is None
        now = time.monotonic_ns()
        self._at: list[int] = [now]
        # what to add to a bpf_ktime_get_ns() value for Unix ns, from `now` on
        self._offsets: list[int] = [time.time_ns() - now if fixed is None else fixed]
        self._set_at: deque[tuple[int, int]] = deque(maxlen=64)  # from the watcher thread

    def sample(self) -> int:
        """Read the offset now (and take what the watcher read when the clock was
        set, first). Returns how far it moved since the last sample when that is
        a step (CLOCK_STEP_NS or more), else 0. The span-building thread's only."""
        if not self._follows:
            return 0
        moved = 0
        while self._set_at:
            moved += self._add(*self._set_at.popleft())
        read = _read_offset()
        if read is not None:
            moved += self._add(*read)
        return moved if abs(moved) >= CLOCK_STEP_NS else 0

    def _add(self, now: int, offset: int) -> int:
        moved = offset - self._offsets[-1]
        if abs(moved) < CLOCK_JITTER_NS or now < self._at[-1]:
            return 0  # the clocks agree as before (or read out of turn): the last sample stands
        self._at.append(now)
        self._offsets.append(offset)
        if len(self._at) > SAMPLES:
            del self._at[0]
            del self._offsets[0]
        return moved

    def watch_steps(self) -> bool:
        """A thread that reads the offset the moment the wall clock is set, so
        that times from then on are not mapped by the offset before it until the
        next drain. False where the kernel's timerfd cannot tell (it then waits
        for the drains)."""
        if not self._follows:
            return False
        fd = clock_set_timer()
        if fd < 0:
            return False
        threading.Thread(target=self._watch, args=(fd,), name="wall-clock", daemon=True).start()
        return True

    def _watch(self, fd: int) -> None:
        while True:
            try:
                os.read(fd, 8)  # blocks: the timer is set for the far future
            except OSError as exc:
                if exc.errno != errno.ECANCELED:
                    log.debug("wall clock watch ended: %s", exc)
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    return
                read = _read_offset()
                if read is not None:
                    self._set_at.append(read)

    def epoch(self, ts: int) -> int:
        """`ts` (monotonic ns) in Unix ns, by the last sample at or before it (the
        first's before the first)."""
        at = self._at
        if ts >= at[-1]:
            return ts + self._offsets[-1]
        return ts + self._offsets[max(bisect_right(at, ts) - 1, 0)]
