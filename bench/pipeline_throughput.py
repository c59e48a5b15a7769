"""Events per second the user-space pipeline sustains, kernel left out.

Replays recorded-shape kernel events (keep-alive HTTP/1.1 exchanges seen from
both the client and the server side) through decode -> tracker -> parser ->
span builder, with a batch processor feeding an exporter that discards.
Prints events/s, spans/s and microseconds per event. No root needed.
"""

from __future__ import annotations

import sys
import time

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_ebpf.model import Direction, Role
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.receivers.sockets import _CONN, _DATA_HEADER, decode
from otel_ebpf.telemetry import SelfTelemetry

REQUEST = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 15\r\nConnection: keep-alive\r\n\r\n<h1>hello</h1>\n"
)


class Discard(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS


def data(sk: int, d: Direction, role: Role, ts: int, off: int, payload: bytes) -> bytes:
    header = _DATA_HEADER.pack(
        1,
        d,
        role,
        1,
        4242,
        4242,
        5,
        sk,
        1,
        ts,
        off,
        off,
        len(payload),
        len(payload),
        b"bench",
        0,
        0,
        b"",
    )
    return header + payload


def opened(sk: int, role: Role, lport: int, rport: int) -> bytes:
    addr = bytes([127, 0, 0, 1]) + bytes(12)
    return _CONN.pack(2, role, 2, 4242, sk, 1, 0, 0, lport, rport, addr, addr)


def records(n: int) -> list[bytes]:
    client, server = 1, 2
    out = [opened(client, Role.CLIENT, 50000, 8080), opened(server, Role.SERVER, 8080, 50000)]
    q = r = 0
    for i in range(n):
        ts = 1000 + i * 10
        out.append(data(client, Direction.EGRESS, Role.CLIENT, ts, q, REQUEST))
        out.append(data(server, Direction.INGRESS, Role.SERVER, ts + 1, q, REQUEST))
        out.append(data(server, Direction.EGRESS, Role.SERVER, ts + 2, r, RESPONSE))
        out.append(data(client, Direction.INGRESS, Role.CLIENT, ts + 3, r, RESPONSE))
        q += len(REQUEST)
        r += len(RESPONSE)
    return out


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    raw = records(n)
    telemetry = SelfTelemetry()
    bsp = BatchSpanProcessor(Discard(), max_queue_size=1 << 20)
    builder = SpanBuilder()
    tracker = ConnectionTracker(
        lambda x, c: bsp.on_end(builder.build(x, c)), ProcessRegistry(), Selector(), telemetry
    )
    start = time.perf_counter()
    for record in raw:
        event = decode(record)
        assert event is not None
        tracker.handle(event)
    elapsed = time.perf_counter() - start
    bsp.shutdown()
    events, spans = len(raw), 2 * n
    print(
        f"pipeline: {events / elapsed:,.0f} events/s, {spans / elapsed:,.0f} spans/s, "
        f"{elapsed / events * 1e6:.1f} us/event ({events} events, {elapsed:.2f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
