"""Calls of one connection back in stream order before the parser sees them.

Calls on one socket from several threads can reach the ring buffer out of
order (the tracepoint fires after the socket lock is released): a call that
starts past the expected offset waits, up to REORDER_LIMIT per connection, for
the calls before it, until the missing one comes or the current drain of the
ring buffer ends; then what waits goes on, gaps and all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from otel_ebpf.model import DataEvent
from otel_ebpf.processors.connections import Connection
from otel_ebpf.telemetry import SelfTelemetry

REORDER_LIMIT: Final = 16


class Reorder:
    def __init__(
        self,
        feed: Callable[[DataEvent], None],
        still_fed: Callable[[Connection], bool],
        fault: Callable[[Exception, int], None],
        telemetry: SelfTelemetry,
    ) -> None:
        self._feed = feed  # the tracker's: a call to parse
        self._still_fed = still_fed  # the connection is still tracked and parsed
        self._fault = fault
        self._telemetry = telemetry
        self._holding: dict[int, Connection] = {}  # connections with held calls
        self._releasing = False

    def admit(self, conn: Connection, ev: DataEvent) -> bool:
        """True: parse `ev` now. False: it waits for the calls before it, or it
        came after we stopped waiting for it (counted: events_late)."""
        if self._releasing:
            return True
        expected = conn.stream_pos[ev.direction]
        if expected is not None and ev.length and ev.offset + ev.length <= expected:
            self._telemetry.events_late += 1
            return False
        # A gap the kernel made on purpose (a shed exchange: the span budget) has
        # nothing on its way to wait for.
        behind = expected is not None and ev.offset > expected and not ev.after_shed
        fills = bool(conn.held) and ev.direction == conn.held[0].direction and not behind
        if (behind or (conn.held and not fills)) and len(conn.held) < REORDER_LIMIT:
            # The call(s) before it may still be on their way; later calls of
            # either direction wait behind it so the parser sees them in order.
            conn.held.append(ev)
            self._holding[conn.sk] = conn
            return False
        return True

    def fed(self, conn: Connection) -> None:
        """A call of `conn` was parsed: held calls that now follow on go, in order."""
        if not conn.held or self._releasing:
            return
        while conn.held:
            ev = conn.held[0]
            expected = conn.stream_pos[ev.direction]
            if expected is not None and ev.offset > expected:
                break  # still a gap before this one
            conn.held.pop(0)
            self._feed_released(ev)
        if not conn.held:
            self._holding.pop(conn.sk, None)

    def release(self, conn: Connection) -> None:
        """Everything `conn` holds goes, in arrival order, gaps and all (its close)."""
        held, conn.held = conn.held, []
        self._holding.pop(conn.sk, None)
        for ev in held:
            if self._still_fed(conn):
                self._feed_released(ev)

    def release_all(self) -> None:
        """End of a drain: calls still waiting go on, gaps and all."""
        holding, self._holding = self._holding, {}
        for conn in holding.values():
            try:
                self.release(conn)
            except Exception as exc:
                self._fault(exc, conn.sk)

    def drop(self, conn: Connection) -> None:
        """`conn` is not parsed any more: what it held is forgotten."""
        conn.held = []
        self._holding.pop(conn.sk, None)

    def _feed_released(self, ev: DataEvent) -> None:
        self._releasing = True
        try:
            self._feed(ev)
        finally:
            self._releasing = False
