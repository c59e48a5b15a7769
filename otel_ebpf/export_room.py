"""Room in a span export queue: wait a moment for the exporter before dropping.

A burst can fill an export queue faster than its exporter thread, which runs at
the collector's low priority, gets the CPU to empty it. Dropping a built span
there loses what the node already paid for. Waiting instead holds the processing
thread, the kernel's ring buffer fills, and the kernel sheds new requests at
their start, counted, while every request stays in the RED metrics. A backend
that does not take spans at all must not hold the collector, though: after one
wait that found no room, spans are dropped at once until the queue has room
again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

WAIT_S: Final = 0.5  # longest a full queue holds the processing thread
POLL_S: Final = 0.001


class QueueRoom:
    """Whether the next span fits in `pending` (a SpanBatcher's queue)."""

    def __init__(
        self,
        pending: deque[Any],
        wait_s: float = WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pending = pending
        self._limit = pending.maxlen
        self._wait_s = wait_s
        self._sleep = sleep
        self._clock = clock
        self._stalled = False  # the last wait found no room: drop without waiting
        self.waited_s = 0.0  # time spent waiting, all told

    def __call__(self) -> bool:
        if self._limit is None or len(self._pending) < self._limit:
            self._stalled = False
            return True
        if self._stalled:
            return False
        start = self._clock()
        deadline = start + self._wait_s
        try:
            while self._clock() < deadline:
                self._sleep(POLL_S)  # the exporter thread takes a batch meanwhile
                if len(self._pending) < self._limit:
                    return True
            self._stalled = True
            return False
        finally:
            self.waited_s += self._clock() - start
