"""Whether an overload leaves the collector slower afterwards: the tracker's cost
per request (one server exchange, parsed and correlated; no kernel, no export)
fresh, then after a burst of pipelined requests no one answered, in alternating
rounds. Prints microseconds per request and the ratio (1.0: no lasting harm).

The burst: 200 connections of one thread each send 200 requests at once, more
than the HTTP/1 parser keeps (64); the oldest are dropped.
"""

from __future__ import annotations

import statistics
import sys
import time

from otel_ebpf.model import ConnOpen, DataEvent, Direction, Endpoint, Role
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.telemetry import SelfTelemetry

REQUEST = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 204 No Content\r\n\r\n"
PID, TID = 5, 77
SERVER = Endpoint("10.0.0.2", 80)


def event(sk: int, d: Direction, ts: int, offset: int, data: bytes) -> DataEvent:
    return DataEvent(
        sk, 1, d, Role.SERVER, PID, TID, 3, ts, offset, len(data), offset, data, b"srv"
    )


def open_conn(t: ConnectionTracker, sk: int) -> None:
    t.handle(ConnOpen(sk, 1, Role.SERVER, PID, SERVER, Endpoint("10.0.0.1", sk), False))


def per_request_us(t: ConnectionTracker, sk: int, n: int, ts: int) -> float:
    open_conn(t, sk)
    start = time.perf_counter()
    for i in range(n):
        t.handle(event(sk, Direction.INGRESS, ts + 2 * i, i * len(REQUEST), REQUEST))
        t.handle(event(sk, Direction.EGRESS, ts + 2 * i + 1, i * len(RESPONSE), RESPONSE))
    return (time.perf_counter() - start) / n * 1e6


def burst(t: ConnectionTracker, first_sk: int, ts: int) -> None:
    data = REQUEST * 200
    for sk in range(first_sk, first_sk + 200):
        open_conn(t, sk)
        t.handle(event(sk, Direction.INGRESS, ts, 0, data))


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = 3
    fresh, after = [], []
    for r in range(rounds):
        for overloaded in (False, True):
            telemetry = SelfTelemetry()
            t = ConnectionTracker(
                lambda _x, _c: None, ProcessRegistry(proc="/nonexistent"), Selector(), telemetry
            )
            per_request_us(t, 1, n, 1_000)  # warm up
            if overloaded:
                burst(t, 10_000, 10**9)
            cost = per_request_us(t, 2, n, 2 * 10**9)
            (after if overloaded else fresh).append(cost)
            print(
                f"round {r + 1} {'after burst' if overloaded else 'fresh      '}: "
                f"{cost:7.1f} µs/request  (requests dropped {telemetry.requests_dropped})"
            )
    f, a = statistics.median(fresh), statistics.median(after)
    print(f"median: fresh {f:.1f} µs, after burst {a:.1f} µs, ratio {a / f:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
