"""Real OTLP receivers for tests: gRPC (opentelemetry-proto + grpcio) and HTTP/protobuf."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2,
    profiles_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    """A received span, flattened for assertions."""

    name: str
    kind: int  # OTLP enum: 2 SERVER, 3 CLIENT
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    resource: dict[str, Any]
    trace_state: str = ""

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name"))


SERVER, CLIENT = 2, 3


def chain_trees(spans: list[Span]) -> tuple[int, int]:
    """(complete trees, wrong links) among the spans of requests through a Chain,
    each request with a path of its own: a tree is complete when all six spans of
    a path are one trace under the driver's CLIENT span; a link is wrong when a
    parent belongs to another path (another request)."""
    by_id = {s.span_id: s for s in spans}
    by_path: dict[str, list[Span]] = {}
    wrong = 0
    for s in spans:
        by_path.setdefault(str(s.attributes.get("url.path")), []).append(s)
        parent = by_id.get(s.parent_span_id)
        if parent is not None and parent.attributes.get("url.path") != s.attributes.get("url.path"):
            wrong += 1
    complete = 0
    for group in by_path.values():
        if len(group) != 6 or len({s.trace_id for s in group}) != 1:
            continue
        roots = [s for s in group if s.parent_span_id not in {x.span_id for x in group}]
        kinds = sorted(s.kind for s in group)
        if len(roots) == 1 and roots[0].kind == CLIENT and kinds == [SERVER] * 3 + [CLIENT] * 3:
            complete += 1
    return complete, wrong


@dataclass
class SpanStore:
    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append(
                        Span(
                            s.name,
                            s.kind,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                            s.status.code,
                            {a.key: _value(a.value) for a in s.attributes},
                            resource,
                            s.trace_state,
                        )
                    )
        with self.lock:
            self.spans.extend(received)
            self.requests += 1

    def matching(self, **attrs: Any) -> list[Span]:
        with self.lock:
            return [
                s for s in self.spans if all(s.attributes.get(k) == v for k, v in attrs.items())
            ]


@dataclass(frozen=True)
class Point:
    """The latest cumulative value of one series."""

    value: float  # sums: the total; histograms: the count
    total: float = 0.0  # histograms: the sum of the recorded values
    bounds: tuple[float, ...] = ()
    buckets: tuple[int, ...] = ()


@dataclass
class MetricStore:
    """Latest cumulative point per (metric, attributes)."""

    points: dict[tuple[str, frozenset[tuple[str, Any]]], Point] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)  # service.name of each resource seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.lock:
            for rm in request.resource_metrics:
                resource = {a.key: _value(a.value) for a in rm.resource.attributes}
                service = resource.get("service.name", "")
                self.services.add(service)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        self._metric(m, service)

    def _metric(self, m: Any, service: str) -> None:
        """Points keyed by their attributes plus their resource's service.name."""
        kind = m.WhichOneof("data")
        data = getattr(m, kind)
        for p in data.data_points:
            attrs = frozenset(
                [("service.name", service), *((a.key, _value(a.value)) for a in p.attributes)]
            )
            if kind == "histogram":
                point = Point(p.count, p.sum, tuple(p.explicit_bounds), tuple(p.bucket_counts))
            else:
                point = Point(p.as_int if p.WhichOneof("value") == "as_int" else p.as_double)
            self.points[(m.name, attrs)] = point

    def series(self, name: str, **attrs: Any) -> dict[frozenset[tuple[str, Any]], Point]:
        """Series of a metric whose attributes include `attrs`."""
        want = set(attrs.items())
        with self.lock:
            return {a: p for (n, a), p in self.points.items() if n == name and want <= set(a)}


class GrpcSink:
    """OTLP/gRPC trace, metrics and profiles receiver; `keep=False` discards (a
    backend that only answers), `delay_s` answers each trace export that late (a
    slow backend)."""

    def __init__(self, port: int = 0, keep: bool = True, delay_s: float = 0.0) -> None:
        self.store = SpanStore()
        self.metrics = MetricStore()
        self.profiles: list[Any] = []  # ExportProfilesServiceRequest, as received
        store, metrics, profiles = self.store, self.metrics, self.profiles

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                if keep:
                    store.add(request)
                time.sleep(delay_s)
                return trace_service_pb2.ExportTraceServiceResponse()

        class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                if keep:
                    metrics.add(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class ProfilesServicer(profiles_service_pb2_grpc.ProfilesServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                if keep:
                    profiles.append(request)
                return profiles_service_pb2.ExportProfilesServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(
            ProfilesServicer(), self._server
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            MetricsServicer(), self._server
        )
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0)


class HttpSink:
    def __init__(self) -> None:
        self.store = SpanStore()
        store = self.store

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = (
                    self.path == "/v1/traces"
                    and self.headers.get("Content-Type") == "application/x-protobuf"
                )
                if ok:
                    req = trace_service_pb2.ExportTraceServiceRequest()
                    req.ParseFromString(body)
                    store.add(req)
                payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


if __name__ == "__main__":  # a slow backend in a process of its own: PORT DELAY_S
    import sys

    sink = GrpcSink(int(sys.argv[1]), keep=False, delay_s=float(sys.argv[2]))  # kept: served
    while True:
        time.sleep(3600)
