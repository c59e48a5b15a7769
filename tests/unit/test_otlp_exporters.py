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
from otel_ebpf.exporters import GrpcSpanExporter, HttpSpanExporter, build_exporter

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
