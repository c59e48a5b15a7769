"""Apps' SDKs export through the collector (OTLP/gRPC and OTLP/HTTP in), unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from harness import CollectorProcess, wait_until
from otlp_sink import GrpcSink

# The app runs in a process of its own: the collector takes an OTLP sender for an
# SDK-instrumented app, and the test process is a traced client in other tests.
SDK_APP = """
import json, sys
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

protocol, endpoint, service = sys.argv[1:4]
exporter = Grpc(endpoint=endpoint, insecure=True) if protocol == "grpc" else Http(endpoint=endpoint)
provider = TracerProvider(resource=Resource({"service.name": service}))
provider.add_span_processor(BatchSpanProcessor(exporter))
tracer = provider.get_tracer("test")
with tracer.start_as_current_span("parent", kind=SpanKind.SERVER, attributes={"k": "v"}) as p:
    with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as c:
        pass
provider.shutdown()  # flushes over the wire to the collector
ids = [p.get_span_context().trace_id, p.get_span_context().span_id, c.get_span_context().span_id]
print(json.dumps(ids))
"""


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sdk_spans_are_forwarded_unchanged(
    collector: CollectorProcess, grpc_sink: GrpcSink, protocol: str
) -> None:
    endpoint = (
        f"127.0.0.1:{collector.otlp_grpc_port}"
        if protocol == "grpc"
        else f"http://127.0.0.1:{collector.otlp_http_port}/v1/traces"
    )
    service = f"sdk-app-{protocol.replace('/', '-')}"
    app = [sys.executable, "-c", SDK_APP, protocol, endpoint, service]
    out = subprocess.run(app, capture_output=True, text=True, timeout=60, check=True)
    trace_id, parent_id, child_id = json.loads(out.stdout)

    def mine() -> list:  # type: ignore[type-arg]
        return [s for s in list(grpc_sink.store.spans) if s.service == service]

    wait_until(lambda: len(mine()) >= 2, 30, "forwarded SDK spans")
    time.sleep(0.5)
    spans = {s.name: s for s in mine()}
    assert len(mine()) == 2
    assert spans["parent"].span_id == f"{parent_id:016x}"
    assert spans["child"].parent_span_id == spans["parent"].span_id
    assert spans["child"].span_id == f"{child_id:016x}"
    assert spans["parent"].trace_id == f"{trace_id:032x}"
    assert spans["parent"].attributes == {"k": "v"}
    assert spans["parent"].kind == 2 and spans["child"].kind == 3
    # the export itself is the collector's own traffic: no HTTP span describes it
    port = collector.otlp_http_port
    assert not [s for s in grpc_sink.store.spans if s.attributes.get("server.port") == port]
    assert collector.telemetry()["spans_received_otlp"] >= 2
