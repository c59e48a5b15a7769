"""The demo's frontend: Flask with the OpenTelemetry SDK (Flask and requests
instrumentations) exporting OTLP to the collector. Each /order calls the backend
with requests (instrumented) and the downstream's /leaf with urllib, which no
instrumentation covers: work the SDK does not see. /order?fail=1 calls the
backend's /fail instead and answers with its status (500).

`demo_frontend.py PORT BACKEND_PORT DOWNSTREAM_PORT`; DEMO_UNINSTRUMENTED=1 runs
the same app without any SDK.
"""

import os
import sys
import urllib.request

import requests
from flask import Flask, request

PORT, BACKEND, DOWNSTREAM = (int(a) for a in sys.argv[1:4])
app = Flask(__name__)
session = requests.Session()

if os.environ.get("DEMO_UNINSTRUMENTED") != "1":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())  # OTEL_SERVICE_NAME names it
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(insecure=True)))
    trace.set_tracer_provider(provider)
    FlaskInstrumentor().instrument_app(app)
    RequestsInstrumentor().instrument()


@app.route("/order")
def order() -> tuple[str, int]:
    path = "/fail" if request.args.get("fail") else "/chain"
    backend = session.get(f"http://127.0.0.1:{BACKEND}{path}", timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{DOWNSTREAM}/leaf", timeout=10) as r:
        r.read()
    return backend.text, backend.status_code


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=PORT, threaded=True)
