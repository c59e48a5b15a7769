"""The whole event path under hostile bytes: ring-buffer records -> decode ->
tracker -> parsers -> span builder -> OTLP encoding, with recorded streams
mutated. Nothing may raise, and nothing may need the tracker's last-resort guard."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from captured import load
from otel_ebpf.live import LiveView
from otel_ebpf.metrics import CollectorMetrics
from otel_ebpf.model import DataEvent, Declined, Direction, Exchange, HttpExchange, Role
from otel_ebpf.otlp_encoding import TraceEncoder
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.correlate import RequestContext
from otel_ebpf.processors.metrics_recorder import MetricsRecorder
from otel_ebpf.processors.routes import RouteTemplates
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.receivers.sockets import decode
from otel_ebpf.telemetry import SelfTelemetry

CAPTURE = 256  # small, so that heads are cut too
STREAMS = {  # recorded stream -> the server port it was recorded against
    "http1_curl.bin": 8080,
    "redis_py.bin": 6379,
    "pg_psql.bin": 5432,
    "pg_psycopg.bin": 5432,
    "mysql_client.bin": 3306,
    "mysql_prepared.bin": 3306,
    "grpc.bin": 50051,
    "h2_curl.bin": 8080,
}
# Digits int() takes and the protocols do not (Latin-1 superscripts, Arabic-Indic),
# signs, separators, framing bytes.
NASTY = [b"\xb2", b"\xb9", b"\xd9\xa3", b"-1", b"+", b"_", b"\r\n", b"\r\n\r\n", b"\x00", b"9" * 30]
_SPOTS = re.compile(rb"(?<=: )|\d+")  # header values, numbers
SK = 0xFFFF_8880_0000_1000


def open_record(role: Role, server_port: int) -> bytes:
    local, remote = (40000, server_port) if role == Role.CLIENT else (server_port, 40000)
    return records.open_record(SK, role, local, remote)


def close_record(ts: int) -> bytes:
    return records.close_record(SK, ts)


def data_record(
    role: Role, egress: bool, ts: int, offset: int, data: bytes, after_shed: bool = False
) -> bytes:
    # Now and then a read the kernel says it counted (whatever it holds): the
    # request that starts next takes the mark, and the span budget's random value.
    counted = role == Role.SERVER and not egress and len(data) % 3 == 0
    rand = (len(data) * 0x9E3779B97F4A7C15) & ((1 << 56) - 1) if counted else 0
    threshold = 1 << 55 if counted else 0
    # Now and then a Go program's call, naming the goroutine it was moved for.
    goroutine = (0xC000000000 + len(data) % 4, ts * (len(data) % 2)) if len(data) % 5 else (0, 0)
    task = len(data) % 3  # and an asyncio program's, naming its task (0: none)
    return records.data_record(
        SK,
        role,
        egress,
        ts,
        offset,
        data,
        CAPTURE,
        counted,
        after_shed,
        rand,
        threshold,
        goroutine,
        task,
    )


class Faults:
    """The exceptions the tracker's guard caught (limits declined on purpose aside)."""

    def __init__(self, tracker: ConnectionTracker) -> None:
        self.caught: list[BaseException] = []
        tracker.on_fault = self.record

    def record(self, exc: Exception) -> None:
        if not isinstance(exc, Declined):
            self.caught.append(exc)


def pipeline(tmp_path: Path) -> tuple[ConnectionTracker, Faults, list[Any]]:
    builder = SpanBuilder(epoch_offset=0)
    encoder = TraceEncoder()  # the exporters' own encoding step
    encoded: list[Any] = []
    recorder = MetricsRecorder(
        CollectorMetrics([InMemoryMetricReader()], SelfTelemetry()),
        RouteTemplates(),
        lambda _local, _remote: None,
    )

    live = LiveView()
    live.snapshot()  # someone runs `otel-ebpf top`: the live view is fed too

    def sink(x: Exchange, conn: Connection) -> None:
        span = builder.build(x, conn)
        if span is not None:
            rc = x.token
            counted = isinstance(rc, RequestContext) and rc.red_in_kernel
            recorder.span(span, conn.local, conn.remote, counted)
            live.span(span, "svc", "peer" if conn.remote else None)
            encoded.append(ExportTraceServiceRequest.FromString(encoder.encode([span])))
        live.snapshot()

    tracker = ConnectionTracker(
        sink, ProcessRegistry(proc=str(tmp_path)), Selector(), SelfTelemetry()
    )
    return tracker, Faults(tracker), encoded


def mutations(chunks: list[tuple[bool, bytes]]) -> st.SearchStrategy[list[tuple[bool, bytes]]]:
    """The recorded calls with a few bytes replaced (mostly where header values and
    numbers are read), and sometimes cut short like a truncated capture. (Calls
    are also shed at random as the span budget sheds them: see `shed_at`.)"""

    @st.composite
    def mutate(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
        out = list(chunks)
        for _ in range(draw(st.integers(1, 12))):
            i = draw(st.integers(0, len(out) - 1))
            is_request, data = out[i]
            spots = [m.start() for m in _SPOTS.finditer(data)]
            if spots and draw(st.integers(0, 2)):
                at = draw(st.sampled_from(spots))
            else:
                at = draw(st.integers(0, len(data)))
            cut = draw(st.integers(0, 4))
            if draw(st.integers(0, 2)):
                nasty = draw(st.sampled_from(NASTY))
            else:
                nasty = draw(st.binary(max_size=8))
            out[i] = (is_request, data[:at] + nasty + data[at + cut :])
        if draw(st.booleans()):
            out = out[: draw(st.integers(1, len(out)))]
        return out

    return mutate()


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER], ids=["client", "server"])
def test_mutated_recorded_streams_never_raise(tmp_path: Path, name: str, role: Role) -> None:
    port = STREAMS[name]

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutations(load(name)), st.sets(st.integers(0, 40), max_size=6))
    def run(chunks: list[tuple[bool, bytes]], shed_at: set[int]) -> None:
        tracker, faults, _ = pipeline(tmp_path)
        tracker.handle(decode(open_record(role, port)))  # type: ignore[arg-type]
        offsets, gap = [0, 0], [False, False]
        for ts, (is_request, data) in enumerate(chunks, start=2):
            egress = is_request == (role == Role.CLIENT)
            d = int(not egress)
            if ts - 2 in shed_at:  # shed by the kernel: a gap its next call admits to
                offsets[d] += len(data)
                gap[d] = True
                continue
            event = decode(data_record(role, egress, ts, offsets[d], data, gap[d]))
            offsets[d] += len(data)
            gap[d] = False
            tracker.handle(event)  # type: ignore[arg-type]
        tracker.release_held()
        tracker.handle(decode(close_record(len(chunks) + 3)))  # type: ignore[arg-type]
        assert faults.caught == []

    run()


def test_non_ascii_digits_in_content_length_and_host_port(tmp_path: Path) -> None:
    """0xB2 is '²' in Latin-1: str.isdigit() says yes, int() says no."""
    tracker, faults, encoded = pipeline(tmp_path)
    tracker.handle(decode(open_record(Role.SERVER, 8080)))  # type: ignore[arg-type]
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    calls = (
        (False, b"GET /ok HTTP/1.1\r\nHost: h:80\r\n\r\n"),
        (True, answer),
        (False, b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: \xb2\r\n\r\n"),
        (False, b"GET /b HTTP/1.1\r\nHost: h:8\xb2\r\n\r\n"),
        (True, answer),
    )
    offsets = [0, 0]
    for ts, (egress, data) in enumerate(calls, start=2):
        event = decode(data_record(Role.SERVER, egress, ts, offsets[egress], data))
        offsets[egress] += len(data)
        tracker.handle(event)  # type: ignore[arg-type]
    tracker.handle(decode(close_record(10)))  # type: ignore[arg-type]
    assert faults.caught == []
    assert tracker._telemetry.parse_errors == 1  # the bad Content-Length, counted
    spans = [
        s for r in encoded for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]
    attrs = [{a.key: a.value for a in span.attributes} for span in spans]
    assert [a["url.path"].string_value for a in attrs] == ["/ok", "/b"]
    assert attrs[0]["server.port"].int_value == 80
    assert attrs[1]["server.port"].int_value == 8080  # Host's is no number: the socket's


def test_a_raising_span_builder_silences_its_connection_only(tmp_path: Path) -> None:
    """The last-resort guard: counted, the connection silenced, the next one traced."""
    telemetry = SelfTelemetry()
    quiet: list[tuple[int, int]] = []
    built: list[str] = []

    def sink(x: Exchange, conn: Connection) -> None:
        assert isinstance(x, HttpExchange)
        if x.request.target == "/boom":
            raise RuntimeError("a bug")
        built.append(x.request.target)

    tracker = ConnectionTracker(
        sink,
        ProcessRegistry(proc=str(tmp_path)),
        Selector(),
        telemetry,
        set_quiet=lambda sk, gen, d, until: quiet.append((sk, d)),
    )
    tracker.handle(decode(open_record(Role.SERVER, 8080)))  # type: ignore[arg-type]
    request = b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    tracker.handle(decode(data_record(Role.SERVER, False, 2, 0, request)))  # type: ignore[arg-type]
    tracker.handle(decode(data_record(Role.SERVER, True, 3, 0, answer)))  # type: ignore[arg-type]
    # the answer's span waits for the connection's next event (its retransmits)
    again = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n"
    tracker.handle(decode(data_record(Role.SERVER, False, 4, len(request), again)))  # type: ignore[arg-type]
    assert telemetry.parse_errors == 1 and telemetry.connections_declined == 1
    assert {(SK, Direction.EGRESS), (SK, Direction.INGRESS)} <= set(quiet)
    assert built == []  # that connection is no longer parsed
    tracker.handle(decode(close_record(5)))  # type: ignore[arg-type]
    tracker.handle(decode(open_record(Role.SERVER, 8080)))  # type: ignore[arg-type]
    tracker.handle(decode(data_record(Role.SERVER, False, 6, 0, again)))  # type: ignore[arg-type]
    tracker.handle(decode(data_record(Role.SERVER, True, 7, 0, answer)))  # type: ignore[arg-type]
    tracker.handle(decode(close_record(8)))  # type: ignore[arg-type]
    assert built == ["/after"]  # a new connection at the same address is traced


def test_the_records_decode_to_the_events_the_kernel_sends() -> None:
    """Guards the helpers above: a record is what the tracker expects."""
    data = b"GET / HTTP/1.1\r\n" + b"x" * 500
    event = decode(data_record(Role.CLIENT, True, 7, 100, data))
    assert isinstance(event, DataEvent)
    assert (event.direction, event.role, event.ts, event.offset) == (
        Direction.EGRESS,
        Role.CLIENT,
        7,
        100,
    )
    assert event.length == len(data) and event.payload == data[:CAPTURE]


def test_a_records_retransmit_stamp_is_decoded() -> None:
    """The stamp tells user space whether the count beside it is still current."""
    raw = records.data_record(SK, Role.SERVER, True, 7, 0, b"x", retransmit_stamp=0xFFFFFFFF)
    event = decode(raw)
    assert isinstance(event, DataEvent) and event.retransmit_stamp == 0xFFFFFFFF
    assert event.replace(ts=8).retransmit_stamp == 0xFFFFFFFF
