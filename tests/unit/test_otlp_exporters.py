"""The OTLP span exporters with the direct encoder, against real gRPC and HTTP
endpoints on loopback: headers, compression, retries and the size limit still
behave as the SDK's exporters do, and the request is the one the SDK would send."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind

from otel_ebpf.config import OtlpExporterConfig
from otel_ebpf.exporters import (
    MAX_REQUEST_BYTES,
    CountingExporter,
    GrpcSpanExporter,
    HttpSpanExporter,
    build_exporter,
)
from otel_ebpf.telemetry import SelfTelemetry

SPANS = [
    ReadableSpan(
        name=f"GET /{i}",
        context=SpanContext(0xABC, 0x100 + i, False),
        resource=Resource({"service.name": "shop"}),
        attributes={"http.response.status_code": 200, "url.path": f"/{i}"},
        kind=SpanKind.SERVER,
        start_time=1_000,
        end_time=2_000,
    )
    for i in range(3)
]


class Received:
    def __init__(self, failures: int) -> None:
        self.failures_left = failures
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.refused: list[trace_service_pb2.ExportTraceServiceRequest] = []  # gRPC's
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def take(self) -> bool:
        """False while failures are still to be given (the backend is 'unavailable')."""
        with self.lock:
            if self.failures_left:
                self.failures_left -= 1
                return False
            return True


@pytest.fixture
def grpc_backend(request: Any) -> Iterator[tuple[int, Received]]:
    received = Received(getattr(request, "param", 0))

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, req: Any, context: Any) -> Any:
            received.headers.append(dict(context.invocation_metadata()))
            if not received.take():
                received.refused.append(req)
                context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
            received.requests.append(req)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, received
    server.stop(0)


@pytest.fixture
def http_backend(request: Any) -> Iterator[tuple[int, Received]]:
    received = Received(getattr(request, "param", 0))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.headers.append({k.lower(): v for k, v in self.headers.items()})
            if received.take():
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.requests.append(
                    trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                )
                self.send_response(200)
            else:
                self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def _otlp(kind: str, endpoint: str, **options: Any) -> Any:
    return build_exporter(kind, OtlpExporterConfig(endpoint=endpoint, **options))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_grpc_sends_the_sdk_request_with_headers(
    grpc_backend: tuple[int, Received], compression: str
) -> None:
    port, received = grpc_backend
    exporter = _otlp(
        "otlp",
        f"127.0.0.1:{port}",
        insecure=True,
        headers={"x-tenant": "blue"},
        compression=compression,
    )
    assert isinstance(exporter, GrpcSpanExporter) and exporter.fast_path
    assert exporter.export(SPANS) == SpanExportResult.SUCCESS
    assert received.requests == [encode_spans(SPANS)]
    assert received.headers[0]["x-tenant"] == "blue"


@pytest.mark.parametrize("grpc_backend", [1], indirect=True)
def test_grpc_retries_an_unavailable_backend(grpc_backend: tuple[int, Received]) -> None:
    port, received = grpc_backend
    exporter = _otlp("otlp", f"127.0.0.1:{port}", insecure=True, timeout=10)
    assert exporter.export(SPANS) == SpanExportResult.SUCCESS
    assert len(received.headers) == 2 and received.requests == [encode_spans(SPANS)]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_http_sends_the_sdk_request_with_headers(
    http_backend: tuple[int, Received], compression: str
) -> None:
    port, received = http_backend
    exporter = _otlp(
        "otlphttp",
        f"http://127.0.0.1:{port}/v1/traces",
        headers={"x-tenant": "blue"},
        compression=compression,
    )
    assert isinstance(exporter, HttpSpanExporter) and exporter.fast_path
    assert exporter.export(SPANS) == SpanExportResult.SUCCESS
    assert received.requests == [encode_spans(SPANS)]
    assert received.headers[0]["x-tenant"] == "blue"
    assert received.headers[0]["content-type"] == "application/x-protobuf"
    assert received.headers[0].get("content-encoding") == (
        "gzip" if compression == "gzip" else None
    )


@pytest.mark.parametrize("http_backend", [1], indirect=True)
def test_http_retries_a_503(http_backend: tuple[int, Received]) -> None:
    port, received = http_backend
    exporter = _otlp("otlphttp", f"http://127.0.0.1:{port}/v1/traces", timeout=10)
    assert exporter.export(SPANS) == SpanExportResult.SUCCESS
    assert len(received.headers) == 2 and len(received.requests) == 1


def test_http_refuses_a_batch_over_the_size_limit(http_backend: tuple[int, Received]) -> None:
    port, received = http_backend
    exporter = HttpSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", max_request_size=50)
    assert exporter.export(SPANS) == SpanExportResult.FAILURE
    assert exporter.export(SPANS[:0]) == SpanExportResult.SUCCESS  # an empty request fits
    assert len(received.requests) == 1


def _large(name: str, size: int) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=SpanContext(0xABC, 0x200 + len(name), False),
        resource=Resource({"service.name": "shop"}),
        attributes={"payload": "x" * size},
        kind=SpanKind.SERVER,
        start_time=1_000,
        end_time=2_000,
    )


def _names(received: Received, refused: bool = False) -> list[str]:
    return [
        span.name
        for request in (received.refused if refused else received.requests)
        for group in request.resource_spans
        for scope in group.scope_spans
        for span in scope.spans
    ]


@pytest.mark.parametrize("kind", ["otlp", "otlphttp"])
def test_a_batch_of_large_spans_goes_in_requests_a_backend_takes(
    grpc_backend: tuple[int, Received], http_backend: tuple[int, Received], kind: str
) -> None:
    """7.5 MiB of spans in one batch: one request would be over the 4 MiB a gRPC
    server takes by default; it goes as three, every span in order."""
    port, received = grpc_backend if kind == "otlp" else http_backend
    endpoint = f"127.0.0.1:{port}" if kind == "otlp" else f"http://127.0.0.1:{port}/v1/traces"
    exporter = _otlp(kind, endpoint, insecure=True, timeout=5)
    spans = [_large(str(i), 1536 << 10) for i in range(5)]
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert _names(received) == ["0", "1", "2", "3", "4"]
    assert len(received.requests) == 3
    assert max(r.ByteSize() for r in received.requests) <= MAX_REQUEST_BYTES


def test_a_span_too_large_alone_is_refused_and_the_rest_of_its_batch_delivered(
    grpc_backend: tuple[int, Received],
) -> None:
    port, received = grpc_backend
    telemetry = SelfTelemetry()
    exporter = CountingExporter(
        _otlp("otlp", f"127.0.0.1:{port}", insecure=True, timeout=1), telemetry
    )
    spans = [_large("small", 100), _large("huge", 5 << 20), _large("after", 100)]
    assert exporter.export(spans) == SpanExportResult.FAILURE
    assert _names(received) == ["small", "after"]
    assert (telemetry.spans_exported, telemetry.spans_export_failed) == (2, 1)


@pytest.mark.parametrize("grpc_backend", [100], indirect=True)
def test_past_a_refused_request_the_rest_of_the_batch_waits_for_the_next_export(
    grpc_backend: tuple[int, Received],
) -> None:
    """A backend that refuses every request: the first of three fails and the
    others are not tried (each would wait out the timeout); all count failed."""
    port, received = grpc_backend
    telemetry = SelfTelemetry()
    exporter = CountingExporter(
        _otlp("otlp", f"127.0.0.1:{port}", insecure=True, timeout=1), telemetry
    )
    assert exporter.export([_large(str(i), 1536 << 10) for i in range(5)]) == (
        SpanExportResult.FAILURE
    )
    tried = _names(received, refused=True)  # the first request, retried
    assert received.requests == [] and tried and set(tried) == {"0", "1"}
    assert (telemetry.spans_exported, telemetry.spans_export_failed) == (0, 5)
