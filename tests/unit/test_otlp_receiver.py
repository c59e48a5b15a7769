"""OTLP protobuf -> ReadableSpan conversion keeps what the SDK sent; a pipeline
without room is a retryable refusal (real gRPC and HTTP on loopback)."""

from __future__ import annotations

import select
import socket
import threading
import time
from http.client import HTTPConnection

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_ebpf.model import Endpoint, OtlpSender
from otel_ebpf.receivers.otlp import (
    MAX_STREAMS_PER_CONNECTION,
    Busy,
    InvalidRequest,
    OtlpReceiver,
    spans_from_request,
)

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


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


def test_a_pipeline_without_room_answers_retry_later_and_the_sdk_sends_again() -> None:
    """Real gRPC and HTTP: a Busy sink is OTLP's retryable refusal (UNAVAILABLE;
    503 with Retry-After), nothing of the request is counted, and the SDK's own
    exporter, refused once, sends the spans again."""
    refusals = [2]  # the next requests the pipeline has no room for
    taken: list[int] = []

    def sink(spans: list[ReadableSpan], _peer: object) -> None:
        if refusals[0]:
            refusals[0] -= 1
            raise Busy("8192 spans wait to be processed: retry later")
        taken.append(len(spans))

    receiver = OtlpReceiver(sink, "127.0.0.1:0", "127.0.0.1:0")
    receiver.start()
    try:
        body = encode_spans(sdk_spans()).SerializeToString()
        channel = grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}")
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(EXPORT)(body, timeout=10)
        channel.close()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry later" in (refused.value.details() or "")
        http = HTTPConnection("127.0.0.1", receiver.http_port, timeout=10)
        http.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        answer = http.getresponse()
        answer.read()
        http.close()
        assert (answer.status, answer.getheader("Retry-After")) == (503, "1")
        assert (receiver.requests_busy, receiver.requests_rejected) == (2, 0)
        assert receiver.spans_received == 0 and taken == []

        refusals[0] = 1
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.grpc_port}", insecure=True)
        assert exporter.export(sdk_spans()) == SpanExportResult.SUCCESS
        exporter.shutdown()
        assert receiver.requests_busy == 3 and taken == [2] and receiver.spans_received == 2
    finally:
        receiver.stop()


def test_grpc_calls_past_the_concurrency_bound_are_refused_at_once() -> None:
    """Calls held in a slow pipeline fill the bound; the next is refused at once
    (RESOURCE_EXHAUSTED, retried by the SDKs) instead of queueing its message."""
    inside = threading.Semaphore(0)
    release = threading.Event()

    def sink(_spans: list[ReadableSpan], _peer: object) -> None:
        inside.release()
        release.wait(30)

    receiver = OtlpReceiver(sink, "127.0.0.1:0", None, max_concurrent_calls=2)
    receiver.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}")
    export = channel.unary_unary(EXPORT)
    body = encode_spans(sdk_spans()).SerializeToString()
    try:
        held = [export.future(body, timeout=30) for _ in range(2)]
        for _ in held:
            assert inside.acquire(timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            export(body, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        assert [call.result() for call in held] == [b"", b""]  # both answered OK
        assert export(body, timeout=10) == b""  # room again
    finally:
        release.set()
        channel.close()
        receiver.stop()


def test_over_the_memory_limit_a_request_is_refused_before_it_is_decoded() -> None:
    """The admission check runs first: not even a malformed body is looked at,
    and the refusal is the retryable one, counted apart from a full queue."""
    over = ["the collector's memory (500 MiB) is above its soft limit (400 MiB): retry later"]
    taken: list[int] = []
    receiver = OtlpReceiver(
        lambda spans, _peer: taken.append(len(spans)),
        "127.0.0.1:0",
        "127.0.0.1:0",
        admission=lambda: over[0] if over else None,
    )
    receiver.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}")
    http = HTTPConnection("127.0.0.1", receiver.http_port, timeout=10)
    try:
        for body in (b"\xff not protobuf", encode_spans(sdk_spans()).SerializeToString()):
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(EXPORT)(body, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == over[0]
            http.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            answer = http.getresponse()
            assert (answer.status, answer.getheader("Retry-After")) == (503, "1")
            assert answer.read() == over[0].encode()
        assert (receiver.requests_busy, receiver.requests_over_memory) == (4, 4)
        assert receiver.requests_rejected == 0 and taken == []
        over.clear()  # back below the soft limit, on the same connections
        assert channel.unary_unary(EXPORT)(body, timeout=10) == b""
        http.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        assert http.getresponse().status == 200
        assert taken == [2, 2] and receiver.requests_over_memory == 4
    finally:
        http.close()
        channel.close()
        receiver.stop()


def test_one_connection_opens_a_bounded_number_of_streams() -> None:
    """Past MAX_STREAMS_PER_CONNECTION calls at once on one connection, a new
    stream is held back by the client or refused by the server before its
    message is read (REFUSED_STREAM: UNAVAILABLE, which the SDKs retry); it is
    never queued in the server. With room there for one call more than the
    bound, the sixth would be RESOURCE_EXHAUSTED had the fifth been queued."""
    inside = threading.Semaphore(0)
    release = threading.Event()

    def sink(_spans: list[ReadableSpan], _peer: object) -> None:
        inside.release()
        release.wait(30)

    receiver = OtlpReceiver(
        sink, "127.0.0.1:0", None, max_concurrent_calls=MAX_STREAMS_PER_CONNECTION + 1
    )
    receiver.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}")
    export = channel.unary_unary(EXPORT)
    body = encode_spans(sdk_spans()).SerializeToString()
    try:
        held = [export.future(body, timeout=30) for _ in range(MAX_STREAMS_PER_CONNECTION)]
        for _ in held:
            assert inside.acquire(timeout=10)
        extra = [export.future(body, timeout=30) for _ in range(2)]
        release.set()
        assert [call.result() for call in held] == [b""] * len(held)
        for call in extra:
            assert call.code() in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    finally:
        release.set()
        channel.close()
        receiver.stop()


def test_a_body_trickled_in_past_the_deadline_is_answered_408_and_closed() -> None:
    receiver = OtlpReceiver(lambda spans, _peer: None, None, "127.0.0.1:0", request_timeout_s=1)
    receiver.start()
    head = (
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", receiver.http_port), timeout=10) as client:
            client.sendall(head)
            for _ in range(200):  # a byte every 50 ms, never a read near 1 s: 10 s
                readable, _, _ = select.select([client], [], [], 0)
                if readable:
                    break
                client.sendall(b"\x0a")
                time.sleep(0.05)
            answer = client.makefile("rb").read()  # to the end: the server closes
        assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close\r\n" in answer
        assert b"not received within 1 s" in answer
        assert receiver.requests_rejected == 1 and receiver.spans_received == 0
    finally:
        receiver.stop()


def test_the_sender_is_named_by_its_socket_and_the_port_it_sent_to() -> None:
    senders: list[OtlpSender | None] = []
    receiver = OtlpReceiver(
        lambda _spans, sender: senders.append(sender), "127.0.0.1:0", "127.0.0.1:0"
    )
    receiver.start()
    body = encode_spans(sdk_spans()).SerializeToString()
    try:
        http = HTTPConnection("127.0.0.1", receiver.http_port, timeout=10)
        http.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        assert http.getresponse().status == 200
        assert http.sock is not None
        client = Endpoint(*http.sock.getsockname()[:2])
        http.close()
        channel = grpc.insecure_channel(f"127.0.0.1:{receiver.grpc_port}")
        assert channel.unary_unary(EXPORT)(body, timeout=10) == b""
        channel.close()
        assert senders[0] == OtlpSender(client, receiver.http_port)
        sender = senders[1]
        assert sender is not None and sender.listener_port == receiver.grpc_port
        assert sender.client.address == "127.0.0.1" and sender.client.port > 0
    finally:
        receiver.stop()
