"""Finding the database CLIENT spans a test caused, in the session's OTLP sink."""

from __future__ import annotations

import time

from harness import wait_until
from otlp_sink import CLIENT, GrpcSink, Span


def db_spans(sink: GrpcSink, system: str, port: int, since: int) -> list[Span]:
    return [
        s
        for s in list(sink.store.spans)
        if s.kind == CLIENT
        and s.start_ns >= since
        and s.attributes.get("db.system.name") == system
        and s.attributes.get("server.port") == port
    ]


def settle(sink: GrpcSink, system: str, port: int, since: int, n: int) -> list[Span]:
    """Wait for at least `n` spans, then a little more so extras would show."""
    wait_until(lambda: len(db_spans(sink, system, port, since)) >= n, 60, f"{n} {system} spans")
    time.sleep(1.0)
    return db_spans(sink, system, port, since)
