"""Apps' SDKs export through the collector (OTLP/gRPC and OTLP/HTTP in), unchanged."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from harness import CollectorProcess, wait_until
from otlp_sink import GrpcSink


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sdk_spans_are_forwarded_unchanged(
    collector: CollectorProcess, grpc_sink: GrpcSink, protocol: str
) -> None:
    exporter = (
        GrpcExporter(endpoint=f"127.0.0.1:{collector.otlp_grpc_port}", insecure=True)
        if protocol == "grpc"
        else HttpExporter(endpoint=f"http://127.0.0.1:{collector.otlp_http_port}/v1/traces")
    )
    service = f"sdk-app-{protocol.replace('/', '-')}"
    provider = TracerProvider(resource=Resource({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span(
            "parent", kind=SpanKind.SERVER, attributes={"k": "v"}
        ) as parent,
        tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child,
    ):
        pass
    provider.shutdown()  # flushes over the wire to the collector

    def mine() -> list:  # type: ignore[type-arg]
        return [s for s in list(grpc_sink.store.spans) if s.service == service]

    wait_until(lambda: len(mine()) >= 2, 30, "forwarded SDK spans")
    time.sleep(0.5)
    spans = {s.name: s for s in mine()}
    assert len(mine()) == 2
    assert spans["parent"].span_id == f"{parent.get_span_context().span_id:016x}"
    assert spans["child"].parent_span_id == spans["parent"].span_id
    assert spans["child"].span_id == f"{child.get_span_context().span_id:016x}"
    assert spans["parent"].trace_id == f"{parent.get_span_context().trace_id:032x}"
    assert spans["parent"].attributes == {"k": "v"}
    assert spans["parent"].kind == 2 and spans["child"].kind == 3
    # the export itself is the collector's own traffic: no HTTP span describes it
    port = collector.otlp_http_port
    assert not [s for s in grpc_sink.store.spans if s.attributes.get("server.port") == port]
    assert collector.telemetry()["spans_received_otlp"] >= 2
