"""Records of the spare ring buffer handed on where they were written.

The kernel writes to the spare ring only the records the main one refused
(bpf/sockets.bpf.c: ring_output), so each belongs among main records written
about the same time. Read after a whole batch of the main ring, it reached its
connection behind that connection's later calls, which wait for an earlier
call only so long (processors/reorder.py): the gap went on to the parser and
the record came late (events_late), costing the requests around it. Merged by
the time it was written, it comes in its place.

The spare ring is read before the main one: every main record written before a
spare record is then in the ring when the main one is drained. Spare records
written after the last main record of a full batch wait for the next poll.
"""

from __future__ import annotations

from bisect import bisect_right
from operator import itemgetter

from otel_ebpf.model import KernelEvent, OutlierExchange, ProcessExec, SelfConn

_TIME = itemgetter(0)


def written_at(event: KernelEvent) -> int:
    """About when the kernel wrote `event` (CLOCK_MONOTONIC ns); 0: order does not matter."""
    if isinstance(event, OutlierExchange):
        return event.end_ts
    if isinstance(event, SelfConn | ProcessExec):
        return 0
    return event.ts


class SpareRecords:
    """Spare-ring events waiting for their place among the main ring's."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, KernelEvent]] = []  # by the time written

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, events: list[KernelEvent]) -> None:
        self._waiting += ((written_at(e), e) for e in events)
        self._waiting.sort(key=_TIME)  # stable: equal times keep their ring order

    def written_before(self, event: KernelEvent) -> list[KernelEvent]:
        """The waiting events written no later than `event`, oldest first; they
        are taken out."""
        cut = bisect_right(self._waiting, written_at(event), key=_TIME)
        due = [e for _, e in self._waiting[:cut]]
        del self._waiting[:cut]
        return due

    def take_all(self) -> list[KernelEvent]:
        due = [e for _, e in self._waiting]
        self._waiting = []
        return due
