"""Events per second the user-space pipeline sustains, kernel left out.

Replays recorded-shape kernel events (keep-alive HTTP/1.1 exchanges seen from
both the client and the server side) through decode -> tracker -> parser ->
span builder, with a batch processor feeding an exporter that discards.
Prints events/s, spans/s and microseconds per event. No root needed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
from records import data_record, open_record

from otel_ebpf.model import Role
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.receivers.sockets import decode
from otel_ebpf.telemetry import SelfTelemetry

REQUEST = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 15\r\nConnection: keep-alive\r\n\r\n<h1>hello</h1>\n"
)


class Discard(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS


def records(n: int) -> list[bytes]:
    client, server = 1, 2
    out = [
        open_record(client, Role.CLIENT, 50000, 8080),
        open_record(server, Role.SERVER, 8080, 50000),
    ]
    q = r = 0
    for i in range(n):
        ts = 1000 + i * 10
        out.append(data_record(client, Role.CLIENT, True, ts, q, REQUEST))
        out.append(data_record(server, Role.SERVER, False, ts + 1, q, REQUEST))
        out.append(data_record(server, Role.SERVER, True, ts + 2, r, RESPONSE))
        out.append(data_record(client, Role.CLIENT, False, ts + 3, r, RESPONSE))
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
