"""Merging SDK and eBPF views of the same requests (pure logic on hand-made spans)."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind

from otel_ebpf.model import Role
from otel_ebpf.processors.correlate import RequestContext
from otel_ebpf.processors.merge import Merger

PID = 42
MS = 1_000_000


def span(
    trace: int,
    span_id: int,
    parent: int | None,
    kind: SpanKind,
    start: int,
    end: int,
    **attrs: object,
) -> ReadableSpan:
    return ReadableSpan(
        name="GET",
        context=SpanContext(trace, span_id, False),
        parent=SpanContext(trace, parent, True) if parent else None,
        resource=Resource({"service.name": "frontend"}),
        attributes={"http.request.method": "GET", **attrs},
        kind=kind,
        start_time=start,
        end_time=end,
    )


def rc(
    role: Role, span_id: int, held: bool = False, duplicates_sdk: bool = False, parent_id: int = 0
) -> RequestContext:
    r = RequestContext(role, PID, PID, 0, None)
    r.span_id, r.parent_id, r.held, r.duplicates_sdk, r.resolved = (
        span_id,
        parent_id,
        held,
        duplicates_sdk,
        True,
    )
    return r


def ids(spans: list[ReadableSpan]) -> dict[int, tuple[int, int | None]]:
    return {
        s.context.span_id: (s.context.trace_id, s.parent.span_id if s.parent else None)
        for s in spans
        if s.context
    }


def test_sdk_duplicate_client_is_dropped_and_its_facts_added() -> None:
    out: list[ReadableSpan] = []
    m = Merger(out.append)
    m.sdk_pids.add(PID)
    ebpf_client = span(
        7, 0xE1, 0x5C, SpanKind.CLIENT, 10 * MS, 20 * MS, **{"network.peer.port": 8080}
    )
    m.ebpf(ebpf_client, rc(Role.CLIENT, 0xE1, duplicates_sdk=True, parent_id=0x5C), PID)
    assert out == [] and m.duplicates_dropped == 1
    m.sdk([span(7, 0x5C, None, SpanKind.CLIENT, 9 * MS, 21 * MS)], PID)
    assert out[0].attributes is not None and out[0].attributes["network.peer.port"] == 8080


def test_duplicate_from_a_process_that_does_not_report_here_is_kept() -> None:
    out: list[ReadableSpan] = []
    m = Merger(out.append)
    m.ebpf(
        span(7, 0xE1, 0x5C, SpanKind.CLIENT, 0, 1), rc(Role.CLIENT, 0xE1, duplicates_sdk=True), PID
    )
    assert len(out) == 1


def test_held_trace_joins_the_sdk_trace_under_the_innermost_sdk_span() -> None:
    out: list[ReadableSpan] = []
    m = Merger(out.append, hold_s=10)
    m.sdk_pids.add(PID)
    ebpf_trace = 0xAAA
    # an uninstrumented call made while serving, then the server span itself
    raw_call = span(ebpf_trace, 0xC1, 0xE0, SpanKind.CLIENT, 12 * MS, 13 * MS)
    m.ebpf(raw_call, rc(Role.CLIENT, 0xC1, held=True, parent_id=0xE0), PID)
    ebpf_server = span(
        ebpf_trace, 0xE0, None, SpanKind.SERVER, 10 * MS, 30 * MS, **{"client.port": 5555}
    )
    m.ebpf(ebpf_server, rc(Role.SERVER, 0xE0, held=True), PID)
    assert out == []  # held until the SDK speaks
    sdk_trace = 0xBBB
    sdk_server = span(sdk_trace, 0x51, None, SpanKind.SERVER, 11 * MS, 29 * MS)
    sdk_inner = span(sdk_trace, 0x52, 0x51, SpanKind.INTERNAL, 11 * MS + 500, 14 * MS)
    m.sdk([sdk_server, sdk_inner], PID)
    got = ids(out)
    assert 0xE0 not in got and m.duplicates_dropped == 1  # the eBPF server span merged away
    assert got[0xC1] == (sdk_trace, 0x52)  # under the innermost SDK span containing it
    merged = next(s for s in out if s.context and s.context.span_id == 0x51)
    assert merged.attributes is not None and merged.attributes["client.port"] == 5555


def test_held_trace_leaves_unchanged_when_no_sdk_span_comes() -> None:
    out: list[ReadableSpan] = []
    m = Merger(out.append, hold_s=10)
    m.sdk_pids.add(PID)
    m.ebpf(span(0xAAA, 0xE0, None, SpanKind.SERVER, 0, 5), rc(Role.SERVER, 0xE0, held=True), PID)
    m.expire(now=1e12)
    assert ids(out) == {0xE0: (0xAAA, None)}


def test_keep_duplicates_keeps_the_ebpf_view_as_a_child() -> None:
    out: list[ReadableSpan] = []
    m = Merger(out.append, keep_duplicates=True)
    m.sdk_pids.add(PID)
    m.ebpf(
        span(0xAAA, 0xE0, None, SpanKind.SERVER, 10 * MS, 30 * MS),
        rc(Role.SERVER, 0xE0, held=True),
        PID,
    )
    m.sdk([span(0xBBB, 0x51, None, SpanKind.SERVER, 11 * MS, 29 * MS)], PID)
    assert ids(out)[0xE0] == (0xBBB, 0x51)


def test_sdk_span_of_another_request_does_not_match() -> None:
    out: list[ReadableSpan] = []
    m = Merger(out.append)
    m.sdk_pids.add(PID)
    m.ebpf(
        span(0xAAA, 0xE0, None, SpanKind.SERVER, 10 * MS, 30 * MS),
        rc(Role.SERVER, 0xE0, held=True),
        PID,
    )
    m.sdk([span(0xBBB, 0x51, None, SpanKind.SERVER, 40 * MS, 50 * MS)], PID)  # later request
    m.sdk(
        [
            span(
                0xCCC,
                0x61,
                None,
                SpanKind.SERVER,
                11 * MS,
                29 * MS,
                **{"http.request.method": "POST"},
            )
        ],
        PID,
    )
    assert [s.context.span_id for s in out if s.context] == [0x51, 0x61]  # E still held
