"""OTLP/gRPC receiver (traces, metrics and profiles) that discards, for benchmarks:
`otlp_null_sink.py PORT`.

It stands in for a backend on another machine, so on the measured one it costs
as little as it can: requests are taken as bytes, never parsed, and answered
with the empty response (a message with no fields is no bytes), at nice 19. A
sink that parsed every request at the default priority used about 10 µs of CPU
per nginx request beside the collector's 40 and competed with nginx and wrk for
the 2-core machine: the bench then charged a backend's work to the collector.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

SERVICES = (
    trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"],
    metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"],
    profiles_service_pb2.DESCRIPTOR.services_by_name["ProfilesService"],
)


def discard(request: bytes, context: Any) -> bytes:
    return b""


def serve(port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # no (de)serializers: the request arrives as bytes, the response leaves as given
    export = grpc.unary_unary_rpc_method_handler(discard)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(s.full_name, {"Export": export}) for s in SERVICES]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


if __name__ == "__main__":
    os.nice(19)
    server = serve(int(sys.argv[1]))
    while True:
        time.sleep(3600)
