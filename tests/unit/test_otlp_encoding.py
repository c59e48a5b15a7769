"""The direct OTLP encoder against the SDK's: the same request, parsed, for any spans."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceState

from otel_ebpf.exporters import sdk_view
from otel_ebpf.model import BuiltSpan, FinishedSpan, SpanIds
from otel_ebpf.otlp_encoding import TraceEncoder

RESOURCES = [
    Resource({"service.name": "shop", "process.pid": 41}),
    Resource(
        {"service.name": "db", "host.arch": "amd64"}, "https://opentelemetry.io/schemas/1.26.0"
    ),
]
SCOPES = [
    InstrumentationScope("otel-ebpf", "0.1", "https://opentelemetry.io/schemas/1.26.0"),
    InstrumentationScope("app.sdk", None, None, {"scope.kind": "manual"}),
    None,
]

scalars = (
    st.text(max_size=20)
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=8)
)
values = (
    scalars
    | st.tuples(st.text(max_size=5), st.text(max_size=5))
    | st.lists(st.integers(0, 9), max_size=3).map(tuple)
)
attributes = st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=6)
ids = st.integers(min_value=1, max_value=(1 << 64) - 1)


@st.composite
def spans(draw: Any) -> ReadableSpan:
    trace_id = draw(st.integers(min_value=1, max_value=(1 << 128) - 1))
    parent = draw(
        st.none() | st.builds(lambda s, r: SpanContext(trace_id, s, r), ids, st.booleans())
    )
    state = draw(st.sampled_from([TraceState(), TraceState([("ot", "th:8"), ("vendor", "x")])]))
    start = draw(st.integers(min_value=0, max_value=1 << 62))
    return ReadableSpan(
        name=draw(st.text(max_size=30)),
        context=SpanContext(trace_id, draw(ids), False, trace_state=state),
        parent=parent,
        resource=draw(st.sampled_from(RESOURCES)),
        attributes=draw(attributes),
        events=draw(
            st.lists(
                st.builds(Event, st.text(max_size=8), attributes, st.integers(0, 1 << 62)),
                max_size=2,
            )
        ),
        links=draw(
            st.lists(
                st.builds(lambda s, a: Link(SpanContext(trace_id, s, True), a), ids, attributes),
                max_size=2,
            )
        ),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=draw(
            st.sampled_from(
                [
                    Status(),
                    Status(StatusCode.OK),
                    Status(StatusCode.ERROR, "boom"),
                    Status(StatusCode.ERROR),
                ]
            )
        ),
        start_time=start,
        end_time=start + draw(st.integers(min_value=0, max_value=10**9)),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


def _sorted(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """Resource groups in a canonical order: each encoder keeps its own first-seen order."""
    groups = sorted(request.resource_spans, key=lambda r: r.SerializeToString(deterministic=True))
    return ExportTraceServiceRequest(resource_spans=groups)


@settings(max_examples=300, deadline=None)
@given(st.lists(spans(), max_size=6))
def test_same_request_as_the_sdk_encoder(batch: list[ReadableSpan]) -> None:
    encoder = TraceEncoder()
    for _ in range(2):  # the second time from what the first kept
        ours = ExportTraceServiceRequest.FromString(encoder.encode(batch))
        assert _sorted(ours) == _sorted(encode_spans(batch))


@settings(max_examples=300, deadline=None)
@given(st.lists(spans(), max_size=8), st.integers(min_value=1, max_value=3000))
def test_requests_of_at_most_a_size_hold_every_span_in_order(
    batch: list[ReadableSpan], max_bytes: int
) -> None:
    """Each request is the SDK's for its run of spans, and fits the bound unless
    it holds one span larger than that alone."""
    at = 0
    for body, count in TraceEncoder().requests(batch, max_bytes):
        assert count >= 1 or not batch
        assert len(body) <= max_bytes or count == 1
        ours = ExportTraceServiceRequest.FromString(body)
        assert _sorted(ours) == _sorted(encode_spans(batch[at : at + count]))
        at += count
    assert at == len(batch)


@st.composite
def built_spans(draw: Any) -> BuiltSpan:
    """The collector's own span record, with what an exchange's span can hold."""
    s = draw(spans())
    ctx, parent = s.context, s.parent
    return BuiltSpan(
        s.name,
        SpanIds(ctx.trace_id, ctx.span_id, False, ctx.trace_state or None),
        SpanIds(ctx.trace_id, parent.span_id, parent.is_remote) if parent else None,
        s.resource,
        dict(s.attributes),
        s.kind,
        s.status,
        s.start_time,
        s.end_time,
        s.instrumentation_scope or SCOPES[0],
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(built_spans() | spans(), max_size=6))
def test_the_collectors_own_spans_encode_as_the_sdk_encodes_them(
    batch: list[FinishedSpan],
) -> None:
    """Ours and the SDK's encoder both read a BuiltSpan as a ReadableSpan (the
    second one is what an SDK whose internals moved falls back to)."""
    ours = ExportTraceServiceRequest.FromString(TraceEncoder().encode(batch))
    assert _sorted(ours) == _sorted(encode_spans(sdk_view(batch)))


@settings(max_examples=200, deadline=None)
@given(built_spans(), st.lists(attributes, min_size=1, max_size=4), st.integers(0, 3))
def test_attributes_spans_share_encode_as_their_own(
    span: BuiltSpan, own: list[dict[str, Any]], lead: int
) -> None:
    """Spans whose leading attributes are one shared dict (a repeated head's)
    encode as if each held its own copy, the shared block kept between batches."""
    shared = dict(list(span.attributes.items())[:lead])
    batch: list[FinishedSpan] = []
    for extra in own:
        attributes = dict(shared)
        attributes.update((k, v) for k, v in extra.items() if k not in shared)
        batch.append(
            BuiltSpan(
                span.name,
                span.context,
                span.parent,
                span.resource,
                attributes,
                span.kind,
                span.status,
                span.start_time,
                span.end_time,
                span.instrumentation_scope,
                shared,
            )
        )
    encoder = TraceEncoder()
    for _ in range(2):
        ours = ExportTraceServiceRequest.FromString(encoder.encode(batch))
        assert _sorted(ours) == _sorted(encode_spans(sdk_view(batch)))


def test_past_their_bound_shared_blocks_start_over_and_encode_the_same() -> None:
    encoder = TraceEncoder()
    resource, scope = RESOURCES[0], SCOPES[0]
    assert scope is not None
    batch: list[FinishedSpan] = []
    for n in range(1_100):  # more shared blocks than kept (1,024)
        shared = {"server.port": n, "url.path": f"/{n}"}
        batch.append(
            BuiltSpan(
                "GET",
                SpanIds(1, n + 1, False),
                None,
                resource,
                {**shared, "http.response.status_code": 200},
                SpanKind.SERVER,
                Status(),
                1,
                2,
                scope,
                shared,
            )
        )
    for start in (0, 500, 1_000):
        part = batch[start : start + 200]
        ours = ExportTraceServiceRequest.FromString(encoder.encode(part))
        assert _sorted(ours) == _sorted(encode_spans(sdk_view(part)))


def test_past_its_bound_the_cache_starts_over_and_encodes_the_same() -> None:
    encoder = TraceEncoder()
    context = SpanContext(1, 2, False)
    for start in range(0, 20_000, 2_000):  # 20,000 distinct values and keys, 16,384 kept
        batch = [
            ReadableSpan(
                name="s",
                context=context,
                resource=RESOURCES[0],
                attributes={"n": n, f"k{n % 1500}": str(n), "method": "GET", "t": n / 7},
            )
            for n in range(start, start + 2_000)
        ]
        ours = ExportTraceServiceRequest.FromString(encoder.encode(batch))
        assert ours == encode_spans(batch)


def test_cached_attributes_keep_types_apart() -> None:
    """True == 1 == 1.0 in Python: the cache must not give one the other's encoding."""
    encoder = TraceEncoder()
    context = SpanContext(1, 2, False)
    batch = [
        ReadableSpan(name="s", context=context, resource=RESOURCES[0], attributes={"v": value})
        for value in (True, 1, 1.0, "1")
    ]
    for _ in range(2):  # the second pass is served from the cache
        decoded = ExportTraceServiceRequest.FromString(encoder.encode(batch))
        got = [s.attributes[0].value for s in decoded.resource_spans[0].scope_spans[0].spans]
        assert [v.WhichOneof("value") for v in got] == [
            "bool_value",
            "int_value",
            "double_value",
            "string_value",
        ]


def test_an_attribute_it_cannot_encode_is_left_out_not_the_batch() -> None:
    span = ReadableSpan(
        name="s",
        context=SpanContext(1, 2, False),
        resource=RESOURCES[0],
        attributes={"huge": 1 << 70, "ok": "yes"},
    )
    decoded = ExportTraceServiceRequest.FromString(TraceEncoder().encode([span]))
    assert [a.key for a in decoded.resource_spans[0].scope_spans[0].spans[0].attributes] == ["ok"]
