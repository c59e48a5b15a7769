"""The span budget: thresholds as the specification writes them, the controller's
steps, and the event path given exchanges the kernel shed (gaps on purpose)."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import pytest
import records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from otel_ebpf.config import load
from otel_ebpf.model import Exchange, OutlierExchange, Role
from otel_ebpf.otlp_encoding import TraceEncoder
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.budget import (
    RAND_BITS,
    BudgetSettings,
    SpanBudget,
    adjusted_count,
    sampling_state,
    threshold_for,
)
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.receivers import sockets
from otel_ebpf.receivers.base_types import RedKey
from otel_ebpf.receivers.pg_names import PgNames, fnv1a_32
from otel_ebpf.receivers.sockets import decode
from otel_ebpf.span_budget import (
    METRICS_ONLY_CPU_PER_1K_REQUESTS,
    METRICS_ONLY_MIN_CPU,
    SpanBudgetKeeper,
    budget_settings,
    default_max_cpu,
)
from otel_ebpf.telemetry import SelfTelemetry

SK = 0xFFFF_8880_0000_2000


@pytest.mark.parametrize(
    ("probability", "th", "weight"),
    [(1.0, "0", 1), (0.5, "8", 2), (0.25, "c", 4), (1 / 8, "e", 8), (1 / 32, "f8", 32)],
)
def test_thresholds_are_written_as_the_specification_says(
    probability: float, th: str, weight: int
) -> None:
    threshold = threshold_for(probability)
    assert sampling_state(threshold).get("ot") == f"th:{th}"
    assert adjusted_count(threshold) == weight


def test_a_probability_outside_zero_to_one_is_refused() -> None:
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            threshold_for(bad)


def budget(per_1k: float = 0.05, min_cpu: float = 0.1) -> SpanBudget:
    return SpanBudget(BudgetSettings(per_1k, min_cpu, None))


def test_over_budget_it_sheds_as_many_halvings_as_the_excess_asks() -> None:
    b = budget()
    # 2,000 requests/s allow 0.1 cores; 0.9 used: 9x over, four halvings (16x):
    # three (8x) would leave it over even if all its CPU were spans
    assert b.update(0.9, 1.0, 2000)
    assert b.halvings == 4
    assert b.threshold == threshold_for(1 / 16)
    assert b.update(0.12, 1.0, 2000)  # what spans do not cost kept it over: one more
    assert b.halvings == 5


def test_a_collector_whose_cpu_is_all_spans_settles_in_one_step() -> None:
    for used in (0.11, 0.2, 0.35, 0.9, 1.6, 3.0):
        b = budget()  # 0.1 cores allowed at 2,000 requests/s
        assert b.update(used, 1.0, 2000, spans=2000)
        # its CPU halves with its spans: within the budget, and not so far under
        # it that a step back follows
        left = used * b.probability
        assert 0.04 < left <= 0.1
        assert not b.update(left, 1.0, 2000, spans=round(2000 * b.probability))


def test_a_collector_behind_its_traffic_sheds_what_its_spans_cost_at_once() -> None:
    b = SpanBudget(BudgetSettings(0.05, 0.1, None, max_cpu=0.5))
    # A span for every request: 1.2 cores (all it got) built 4,800 spans, 250 us
    # each, while 218,000 requests came; the 0.5-core cap fits 1 in 109 of them.
    assert b.update(1.2, 1.0, 218_000, spans=4800)
    assert b.halvings == 7  # 1 in 128 at once; the CPU's excess alone asked for 1 in 4
    assert not b.update(0.42, 1.0, 218_000, spans=1700)  # within it: stays
    assert b.halvings == 7


def test_a_collector_starved_under_its_budget_while_the_ring_fills_still_sheds() -> None:
    b = budget()  # 0.1 cores allowed at 2,000 requests/s
    # nice 19 on a busy node: 0.05 cores got 100 spans while 2,000 requests came
    # and the kernel shed for a backlog; what the spans cost fits 1 in 10
    assert b.update(0.05, 1.0, 2000, spans=100, behind=True)
    assert b.halvings == 4
    assert not budget().update(0.05, 1.0, 2000, spans=100)  # not behind: within it
    c = budget()
    assert c.update(0.01, 1.0, 2000, behind=True)  # no span to weigh: one step
    assert c.halvings == 1


def test_a_collector_that_keeps_up_sheds_by_its_excess() -> None:
    b = budget()
    # 2,000 requests/s allow 0.1 cores; 0.9 used for 2,000 spans: 9x over either
    # way, four halvings (16x), as without the spans' count
    assert b.update(0.9, 1.0, 2000, spans=2000)
    assert b.halvings == 4


def test_well_under_budget_it_steps_back_one_halving_at_a_time() -> None:
    b = budget()
    b.update(0.9, 1.0, 2000)
    assert not b.update(0.07, 1.0, 2000)  # within the budget, above 40 % of it: stays
    assert b.update(0.03, 1.0, 2000)
    assert b.halvings == 3
    for _ in range(5):
        b.update(0.0, 1.0, 0)
    assert b.halvings == 0 and b.threshold == 0


def test_the_floor_lets_a_quiet_node_keep_every_span() -> None:
    b = budget(min_cpu=0.1)
    assert not b.update(0.08, 1.0, 50)  # 0.4 ms a request, 50 a second: under the floor
    assert b.threshold == 0


def test_a_busy_node_does_not_raise_the_budget_past_its_cap() -> None:
    b = SpanBudget(BudgetSettings(0.05, 0.1, None, max_cpu=0.5))
    # 100,000 requests/s would allow 5 cores; the cap allows 0.5, and 1.2 are used
    assert b.update(1.2, 1.0, 100_000)
    assert b.allowed == 0.5 and b.halvings == 2


def test_halvings_stop_at_one_in_4096() -> None:
    b = budget()
    for _ in range(10):
        b.update(64.0, 1.0, 100)
    assert b.probability == 1 / 4096


def test_a_fixed_probability_or_no_budget_never_moves() -> None:
    fixed = SpanBudget(BudgetSettings(0.05, 0.1, 0.25))
    assert fixed.threshold == threshold_for(0.25)
    assert not fixed.update(5.0, 1.0, 10)
    off = SpanBudget(BudgetSettings(0.0, 0.1, None))
    assert not off.adaptive and not off.update(5.0, 1.0, 10) and off.threshold == 0


def test_without_a_span_exporter_the_unset_settings_take_the_metrics_only_defaults() -> None:
    installed = load(env={}).ebpf.span_budget
    assert budget_settings(installed, True, cpus=8) == BudgetSettings(0.05, 0.1, None, 0.5)
    assert budget_settings(installed, spans_leave=False, cpus=8) == BudgetSettings(
        METRICS_ONLY_CPU_PER_1K_REQUESTS, METRICS_ONLY_MIN_CPU, None, 0.5
    )
    # what is set stays as set: a span per request, a floor, a probability
    every = load(env={"OTEL_EBPF_SPAN_BUDGET": "0"}).ebpf.span_budget
    assert budget_settings(every, spans_leave=False).cpu_per_1k_requests == 0.0
    assert not SpanBudget(budget_settings(every, spans_leave=False)).adaptive
    floor = load(env={"OTEL_EBPF_SPAN_BUDGET_MIN_CPU": "0.3"}).ebpf.span_budget
    assert budget_settings(floor, spans_leave=False, cpus=8) == BudgetSettings(
        METRICS_ONLY_CPU_PER_1K_REQUESTS, 0.3, None, 0.5
    )
    fixed = load(env={"OTEL_EBPF_SPAN_PROBABILITY": "0.5"}).ebpf.span_budget
    assert SpanBudget(budget_settings(fixed, spans_leave=False)).probability == 0.5


def test_the_cap_unless_set_is_a_tenth_of_the_node_never_below_the_floor() -> None:
    installed = load(env={}).ebpf.span_budget
    caps = [budget_settings(installed, True, cpus=n).max_cpu for n in (1, 2, 4, 5, 64)]
    assert caps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    # metrics only: its floor is lower, the node's share the same
    assert budget_settings(installed, False, cpus=2).max_cpu == pytest.approx(0.2)
    # a floor above the node's share wins (it was asked for); a cap set stays
    floor = load(env={"OTEL_EBPF_SPAN_BUDGET_MIN_CPU": "0.3"}).ebpf.span_budget
    assert budget_settings(floor, True, cpus=2).max_cpu == 0.3
    capped = load(env={"OTEL_EBPF_SPAN_BUDGET_MAX_CPU": "2"}).ebpf.span_budget
    assert budget_settings(capped, True, cpus=2).max_cpu == 2.0
    # on this node, os.cpu_count()'s
    assert budget_settings(installed, True).max_cpu == default_max_cpu(os.cpu_count() or 1)
    # and the budget keeps to it at any rate
    b = SpanBudget(budget_settings(installed, True, cpus=2))
    b.update(cpu_seconds=0.4, wall_seconds=1.0, requests=100_000, spans=10_000)
    assert b.allowed == pytest.approx(0.2) and b.halvings >= 1


# -- the event path with exchanges shed in the kernel ---------------------------


def tracker(tmp_path: Path) -> tuple[ConnectionTracker, list[ExportTraceServiceRequest]]:
    builder = SpanBuilder(epoch_offset=0)
    encoder = TraceEncoder()
    encoded: list[ExportTraceServiceRequest] = []

    def sink(x: Exchange, conn: Connection) -> None:
        span = builder.build(x, conn)
        if span is not None:
            encoded.append(ExportTraceServiceRequest.FromString(encoder.encode([span])))

    t = ConnectionTracker(sink, ProcessRegistry(proc=str(tmp_path)), Selector(), SelfTelemetry())
    return t, encoded


def exported(encoded: list[ExportTraceServiceRequest]) -> list[tuple[str, int, bytes, str]]:
    """(path, status, trace id, tracestate) of each span."""
    out = []
    for request in encoded:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    a = {kv.key: kv.value for kv in s.attributes}
                    status = a["http.response.status_code"].int_value
                    out.append((a["url.path"].string_value, status, s.trace_id, s.trace_state))
    return out


def drive(t: ConnectionTracker, kept: list[bool], threshold: int) -> list[int]:
    """A server connection's exchanges; those not kept are shed as the kernel
    sheds them (nothing sent, the next call sent marked after_shed). Returns the
    random values of the kept ones."""
    t.handle(decode(records.open_record(SK, Role.SERVER, 8080, 40000)))  # type: ignore[arg-type]
    offsets, gap, ts, rands = [0, 0], [False, False], 2, []
    for i, keep in enumerate(kept):
        request = f"GET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
        body = b"x" * (i % 7)
        answer = f"HTTP/1.1 {200 + i % 3} OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        rand = (threshold + i * 7919) & RAND_BITS if keep else 0
        for egress, data in ((False, request), (True, answer), (True, body)):
            if keep and data:
                first = not egress
                event = records.data_record(
                    SK,
                    Role.SERVER,
                    egress,
                    ts,
                    offsets[egress],
                    data,
                    red_counted=first,
                    after_shed=gap[egress],
                    rand=rand if first else 0,
                    threshold=threshold if first else 0,
                )
                gap[egress] = False
                t.handle(decode(event))  # type: ignore[arg-type]
            elif data:
                gap[egress] = True
            offsets[egress] += len(data)
            ts += 1
        if keep:
            rands.append(rand)
    t.release_held()
    t.handle(decode(records.close_record(SK, ts)))  # type: ignore[arg-type]
    return rands


def test_shed_exchanges_leave_no_trace_and_kept_ones_carry_their_threshold(
    tmp_path: Path,
) -> None:
    t, encoded = tracker(tmp_path)
    threshold = threshold_for(0.25)
    kept = [True, False, False, True, False, True, True]
    rands = drive(t, kept, threshold)
    spans = exported(encoded)
    assert [(p, s) for p, s, _, _ in spans] == [
        (f"/r{i}", 200 + i % 3) for i, k in enumerate(kept) if k
    ]
    for (_, _, trace_id, state), rand in zip(spans, rands, strict=True):
        assert state == "ot=th:c"
        assert int.from_bytes(trace_id, "big") & RAND_BITS == rand  # the trace's randomness
    telemetry = t._telemetry
    assert telemetry.parse_errors == 0
    assert telemetry.requests_unanswered == 0
    assert telemetry.events_late == 0


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.booleans(), min_size=1, max_size=25))
def test_any_pattern_of_shed_exchanges_gives_exactly_the_kept_ones(
    tmp_path: Path, kept: list[bool]
) -> None:
    t, encoded = tracker(tmp_path)
    drive(t, kept, threshold_for(0.5))
    assert [(p, s) for p, s, _, _ in exported(encoded)] == [
        (f"/r{i}", 200 + i % 3) for i, k in enumerate(kept) if k
    ]
    assert t._telemetry.parse_errors == 0 and t._telemetry.requests_unanswered == 0


# -- shed requests kept for failing or being slow ---------------------------------


def outlier_record(role: Role, status: int, method: bytes = b"POST") -> bytes:
    key = RedKey(
        tgid=4242,
        port=8080,
        status=status,
        method=method,
        version=b"1",
        role=int(role),
        family=2,
        tls=0,
        path=b"/orders/12",
        host=b"shop.example:9090" if role == Role.CLIENT else b"",
        comm=b"app",
    )
    key.peer[:4] = [10, 1, 2, 3]
    return sockets._OUTLIER.pack(sockets._EV_OUTLIER, 0xABC, 1_000, 251_000_000) + bytes(key)


def test_a_failed_shed_request_becomes_a_partial_span() -> None:
    x = decode(outlier_record(Role.SERVER, 503))
    assert isinstance(x, OutlierExchange)
    assert (x.pid, x.method, x.path, x.status, x.version) == (
        4242,
        "POST",
        "/orders/12",
        503,
        "1.1",
    )
    span = SpanBuilder(epoch_offset=0).outlier(x, Resource.create({"service.name": "shop"}))
    attrs = span.attributes or {}
    assert span.kind == SpanKind.SERVER and span.name == "POST"
    assert attrs["url.path"] == "/orders/12" and attrs["http.response.status_code"] == 503
    assert attrs["error.type"] == "503" and attrs["otel_ebpf.span.partial"] is True
    assert span.status.status_code == StatusCode.ERROR
    assert (span.end_time or 0) - (span.start_time or 0) == 250_999_000


def test_a_shed_client_request_names_its_server_by_host() -> None:
    x = decode(outlier_record(Role.CLIENT, 0, method=b"BREW"))
    assert isinstance(x, OutlierExchange)
    span = SpanBuilder(epoch_offset=0).outlier(x, Resource.create({}))
    attrs = span.attributes or {}
    assert span.kind == SpanKind.CLIENT and span.name == "_OTHER"
    assert (attrs["server.address"], attrs["server.port"]) == ("shop.example", 9090)
    assert attrs["network.peer.address"] == "10.1.2.3"
    assert attrs["error.type"] == "no_response" and "url.path" not in attrs


def test_a_shed_redis_error_becomes_a_partial_span_without_its_text() -> None:
    key = RedKey(
        tgid=4242,
        port=6379,
        status=2,  # an error reply
        role=int(Role.CLIENT),
        family=2,
        path=b"incrby",
        host=b"WRONGTYPE",
        comm=b"app",
        proto=1,
    )
    key.peer[:4] = [10, 1, 2, 3]
    record = sockets._OUTLIER.pack(sockets._EV_OUTLIER, 0xABC, 1_000, 2_000_000) + bytes(key)
    x = decode(record)
    assert isinstance(x, OutlierExchange)
    assert (x.protocol, x.method, x.error, x.host, x.path) == (
        "redis",
        "INCRBY",
        "WRONGTYPE",
        "",
        "",
    )
    span = SpanBuilder(epoch_offset=0).outlier(x, Resource.create({}))
    attrs = span.attributes or {}
    assert span.kind == SpanKind.CLIENT and span.name == "INCRBY"
    assert attrs["db.system.name"] == "redis" and attrs["db.operation.name"] == "INCRBY"
    assert attrs["db.response.status_code"] == attrs["error.type"] == "WRONGTYPE"
    assert (attrs["server.address"], attrs["server.port"]) == ("10.1.2.3", 6379)
    assert span.status.status_code == StatusCode.ERROR and attrs["otel_ebpf.span.partial"]


OUTLIER_SIZE = sockets._OUTLIER.size + ctypes.sizeof(RedKey)


def test_a_truncated_outlier_record_is_ignored() -> None:
    assert decode(outlier_record(Role.SERVER, 500)[:100]) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=OUTLIER_SIZE, max_size=OUTLIER_SIZE), st.integers(0, 255))
def test_any_outlier_record_decodes_and_builds_or_is_ignored(raw: bytes, role: int) -> None:
    """Whatever a record holds (the kernel copies a path and Host as they came),
    it becomes a span or nothing, never an exception; one with a role, a span."""
    record = bytearray(raw)
    record[0] = sockets._EV_OUTLIER
    record[sockets._OUTLIER.size + RedKey.role.offset] = role
    x = decode(bytes(record), pg_names())
    assert (x is not None) == (role in (Role.CLIENT, Role.SERVER))
    if x is not None:
        assert isinstance(x, OutlierExchange)
        SpanBuilder(epoch_offset=0).outlier(x, Resource.create({}))


def test_lost_events_shed_twice_as_many_whatever_the_cpu() -> None:
    b = budget()
    assert b.events_were_lost() and b.halvings == 1
    fixed = SpanBudget(BudgetSettings(0.05, 0.1, 0.5))
    assert not fixed.events_were_lost()  # a fixed share stays


# -- PostgreSQL statements shed in the kernel --------------------------------------


def pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + len(body + b"1234").to_bytes(4, "big") + body


def drive_pg(t: ConnectionTracker, statements: list[tuple[bool, str, str | None]]) -> None:
    """A client's simple queries (kept?, text, SQLSTATE of its error); those not kept
    are shed as the kernel sheds them, from the Query to the next one."""
    t.handle(decode(records.open_record(SK, Role.CLIENT, 40000, 5432)))  # type: ignore[arg-type]
    offsets, gap, ts = [0, 0], [False, False], 2
    for keep, text, error in statements:
        query = pg_message(b"Q", text.encode() + b"\0")
        if error:
            answer = pg_message(b"E", b"SERROR\0C" + error.encode() + b"\0Mno\0\0")
        else:
            answer = pg_message(b"C", b"SELECT 1\0")
        answer += pg_message(b"Z", b"I")
        for egress, data in ((True, query), (False, answer)):
            if keep:
                event = records.data_record(
                    SK, Role.CLIENT, egress, ts, offsets[egress], data,
                    red_counted=egress, after_shed=gap[egress],
                )  # fmt: skip
                gap[egress] = False
                t.handle(decode(event))  # type: ignore[arg-type]
            else:
                gap[egress] = True
            offsets[egress] += len(data)
            ts += 1
    t.release_held()
    t.handle(decode(records.close_record(SK, ts)))  # type: ignore[arg-type]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=20))
def test_any_pattern_of_shed_statements_gives_exactly_the_kept_ones(
    tmp_path: Path, pattern: list[tuple[bool, bool]]
) -> None:
    """A shed statement's bytes are a gap between whole messages: the kept ones
    around it pair with their own answers (an error stays with its statement)."""
    t, spans = records.traced(tmp_path)
    statements = [
        (keep, f"SELECT * FROM t{i}", "42P01" if failed else None)
        for i, (keep, failed) in enumerate(pattern)
    ]
    drive_pg(t, statements)
    got = [(s.name, (s.attributes or {}).get("error.type")) for s in spans if s is not None]
    assert got == [(f"SELECT t{i}", e) for i, (k, _, e) in enumerate(statements) if k]
    assert t._telemetry.parse_errors == 0 and t._telemetry.requests_unanswered == 0


def pg_names() -> PgNames:
    texts = {0xF1: b"SELECT * FROM no_such_table WHERE id = 7\0garbage"[:40]}
    databases = {fnv1a_32(b"shop"): b"shop\0" + bytes(59)}
    return PgNames(texts.get, databases.get)


def test_a_shed_postgresql_error_is_named_from_what_the_kernel_kept() -> None:
    key = RedKey(
        tgid=4242,
        port=5432,
        status=2,  # an ErrorResponse
        role=int(Role.CLIENT),
        family=2,
        host=b"42P01",
        comm=b"app",
        proto=2,
    )
    ctypes.memmove(
        ctypes.addressof(key) + RedKey.path.offset,
        sockets._PG_COUNTED.pack(0xF1, fnv1a_32(b"shop")),
        sockets._PG_COUNTED.size,
    )
    key.peer[:4] = [10, 1, 2, 3]
    record = sockets._OUTLIER.pack(sockets._EV_OUTLIER, 0xABC, 1_000, 2_000_000) + bytes(key)
    x = decode(record, pg_names())
    assert isinstance(x, OutlierExchange)
    assert (x.protocol, x.method, x.path, x.host, x.error) == (
        "postgresql",
        "SELECT",
        "no_such_table",
        "shop",
        "42P01",
    )
    span = SpanBuilder(epoch_offset=0).outlier(x, Resource.create({}))
    attrs = span.attributes or {}
    assert span.name == "SELECT no_such_table" and span.kind == SpanKind.CLIENT
    assert attrs["db.namespace"] == "shop" and attrs["db.collection.name"] == "no_such_table"
    assert attrs["db.response.status_code"] == attrs["error.type"] == "42P01"
    assert "db.query.text" not in attrs  # its literals never leave
    unnamed = decode(record)  # no names at hand: counted all the same, unnamed
    assert isinstance(unnamed, OutlierExchange) and unnamed.method == unnamed.host == ""


def test_postgresql_names_the_kernel_no_longer_kept_are_counted() -> None:
    names = pg_names()
    assert names.statement(0xF1) == ("SELECT", "no_such_table")
    assert names.statement(0xF2) == ("", "") and names.unnamed == 1
    assert names.database(fnv1a_32(b"shop")) == "shop"
    assert names.database(0) == "" and names.database(1) == ""


def test_the_kernel_seeks_the_parameters_the_server_reads() -> None:
    source = (Path(__file__).parents[2] / "bpf" / "sockets.bpf.c").read_text()
    for name, define in ((b"database", "FNV32_DATABASE"), (b"user", "FNV32_USER")):
        assert f"#define {define} {fnv1a_32(name):#x}" in source


class _Receiver:
    """What the keeper reads of the kernel: its shed counters and whose requests
    went uncounted (pid -> total)."""

    def __init__(self) -> None:
        self.uncounted: dict[int, int] = {}

    def shed_counts(self) -> tuple[int, int, int, int]:
        return 0, 0, sum(self.uncounted.values()), 0

    def uncounted_processes(self) -> dict[int, int]:
        return dict(self.uncounted)

    def set_span_threshold(self, threshold: int) -> None:
        self.threshold = threshold

    def keep_slower_than(self, seconds: float) -> None:
        pass

    def watch_ring(self) -> None:
        pass


@pytest.mark.parametrize("spans_leave", [True, False])
def test_the_start_log_says_the_budget_and_its_cap(
    caplog: pytest.LogCaptureFixture, spans_leave: bool
) -> None:
    settings = budget_settings(load(env={}).ebpf.span_budget, spans_leave, cpus=2)
    keeper = SpanBudgetKeeper(
        SpanBudget(settings),
        _Receiver(),  # type: ignore[arg-type]
        SelfTelemetry(),
        str,
        spans_leave,
    )
    caplog.set_level("INFO", logger="otel_ebpf.span_budget")
    keeper.start(1.0)
    (said,) = [r.getMessage() for r in caplog.records]
    floor = "0.1" if spans_leave else "0.02"
    assert f"(at least {floor}, at most 0.2, OTEL_EBPF_SPAN_BUDGET*)" in said
    assert said.startswith("requests get a span" if spans_leave else "metrics only")


def test_each_tick_says_the_collectors_cpu_and_what_the_budget_allows() -> None:
    telemetry = SelfTelemetry()
    keeper = SpanBudgetKeeper(
        SpanBudget(BudgetSettings(0.05, 0.1, None, 0.2)),
        _Receiver(),  # type: ignore[arg-type]
        telemetry,
        str,
    )
    keeper.restart_clock()
    busy_until = time.thread_time() + 0.05
    while time.thread_time() < busy_until:  # CPU the tick must see
        pass
    keeper.tick()
    assert telemetry.collector_cpu_millicores > 0
    assert telemetry.span_budget_allowed_millicores == 100  # no traffic: the floor
    off = SelfTelemetry()
    no_budget = SpanBudget(BudgetSettings(0.0, 0.1, None))
    SpanBudgetKeeper(no_budget, _Receiver(), off, str).tick()  # type: ignore[arg-type]
    assert off.span_budget_allowed_millicores == 0  # no adaptive budget


def test_uncounted_requests_are_said_with_the_processes_that_sent_them_since_last_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver, telemetry = _Receiver(), SelfTelemetry()
    names = {10: "redis-py-app", 20: "curl"}
    keeper = SpanBudgetKeeper(
        SpanBudget(BudgetSettings(0.0, 0.0, 1.0, 0.0)),
        receiver,  # type: ignore[arg-type]
        telemetry,
        lambda pid: names.get(pid, f"unknown_service:{pid}"),
    )
    caplog.set_level("WARNING", logger="otel_ebpf.span_budget")
    receiver.uncounted = {10: 2, 20: 5}
    keeper.tick()
    receiver.uncounted = {10: 3, 20: 5, 30: 1}
    keeper.tick()
    keeper.tick()  # nothing new: nothing said
    said = [r.getMessage().split("per connection): ")[1] for r in caplog.records]
    assert said == [
        "curl (pid 20): 5, redis-py-app (pid 10): 2",
        "redis-py-app (pid 10): 1, unknown_service:30 (pid 30): 1",
    ]
    assert telemetry.requests_shed_uncounted == 9
