"""OTLP protobuf -> ReadableSpan conversion keeps what the SDK sent (pure logic)."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_ebpf.receivers.otlp import InvalidRequest, spans_from_request


def sdk_spans():  # type: ignore[no-untyped-def]
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "frontend", "k": 1}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("demo", "1.2")
    with (
        tracer.start_as_current_span(
            "GET /", kind=SpanKind.SERVER, attributes={"a": "b", "n": [1, 2]}
        ),
        tracer.start_as_current_span("db", kind=SpanKind.CLIENT) as child,
    ):
        child.add_event("retry", {"attempt": 2})
        child.set_status(Status(StatusCode.ERROR, "boom"))
    return memory.get_finished_spans()


def test_round_trip_keeps_ids_tree_and_attributes() -> None:
    sent = sdk_spans()
    got = spans_from_request(encode_spans(sent))
    assert len(got) == len(sent) == 2
    by_name = {s.name: s for s in got}
    for original in sent:
        copy = by_name[original.name]
        assert copy.context.trace_id == original.context.trace_id
        assert copy.context.span_id == original.context.span_id
        assert (copy.parent.span_id if copy.parent else None) == (
            original.parent.span_id if original.parent else None
        )
        assert copy.kind == original.kind
        assert (copy.start_time, copy.end_time) == (original.start_time, original.end_time)
        assert dict(copy.attributes or {}) == {
            k: tuple(v) if isinstance(v, tuple | list) else v
            for k, v in (original.attributes or {}).items()
        }
        assert copy.resource.attributes["service.name"] == "frontend"
        assert copy.instrumentation_scope is not None and copy.instrumentation_scope.name == "demo"
    db = by_name["db"]
    assert db.status.status_code == StatusCode.ERROR and db.status.description == "boom"
    assert [e.name for e in db.events] == ["retry"] and db.events[0].attributes == {"attempt": 2}
    # and it encodes again, as the exporters will
    assert len(encode_spans(got).resource_spans) == 1


def test_content_otlp_does_not_allow_refuses_the_request() -> None:
    for mutate in (
        lambda s: setattr(s, "kind", 99),
        lambda s: s.status.__setattr__("code", 7),
        lambda s: setattr(s, "trace_id", b"\x01" * 17),
        lambda s: setattr(s, "span_id", b"\x01" * 3),
        lambda s: setattr(s, "parent_span_id", b"\x01" * 9),
    ):
        request = encode_spans(sdk_spans())
        mutate(request.resource_spans[0].scope_spans[0].spans[0])
        with pytest.raises(InvalidRequest):
            spans_from_request(request)
