"""An SDK-instrumented HTTP client in a test host: `sdk_client.py BASE_URL`.

Reads commands from stdin, `ok N` or `fail N`: N GETs of BASE_URL/ok or
BASE_URL/status/500, each inside its own root span ("checkout") with `requests`
instrumented (so the server gets a traceparent), and prints `TRACE_ID STATUS` per
request, then `done`. Spans go over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT; at the
end of input they are flushed and the process exits.
"""

import sys

import requests
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

provider = TracerProvider(resource=Resource.create())  # OTEL_SERVICE_NAME names it
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
trace.set_tracer_provider(provider)
RequestsInstrumentor().instrument()
tracer = trace.get_tracer("sdk_client")
session = requests.Session()

for line in sys.stdin:
    kind, count = line.split()
    path = "/ok" if kind == "ok" else "/status/500"
    for _ in range(int(count)):
        with tracer.start_as_current_span("checkout") as span:
            status = session.get(sys.argv[1] + path, timeout=10).status_code
        print(f"{span.get_span_context().trace_id:032x} {status}")
    print("done", flush=True)
provider.shutdown()
