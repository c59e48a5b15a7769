"""OTLP trace receiver: gRPC (default 127.0.0.1:4317) and HTTP/protobuf (127.0.0.1:4318).

Apps' SDKs export through the collector as through any sidecar or node
collector. Received spans become SDK ReadableSpans and go down the same
pipeline as eBPF spans, so every exporter sees them; nothing is changed on the
way (merging SDK and eBPF views of one request builds on this).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from otel_ebpf.http_server import QuietHTTPServer
from otel_ebpf.model import Endpoint, OtlpSender
from otel_ebpf.receivers.otlp_body import DEFAULT_MAX_BODY, Rejected, decompress, read_body
from otel_ebpf.telemetry import fault_summary

log = logging.getLogger(__name__)

SpanSink = Callable[[list[ReadableSpan], OtlpSender | None], None]  # spans, their sender
Admission = Callable[[], str | None]  # before a request is decoded: None, or why not now
DEFAULT_MAX_GRPC_MESSAGE = 4 << 20  # the Collector's configgrpc max_recv_msg_size_mib default
# gRPC calls under way or waiting for one of the 4 workers, each holding its
# message: past it a call is refused at once (RESOURCE_EXHAUSTED, which the SDKs
# retry), so a burst of large requests cannot queue without bound.
DEFAULT_MAX_CONCURRENT_CALLS = 32
# HTTP/2 streams one connection may have open. An SDK sends one request at a
# time; past it the client holds a stream back, or it is refused (UNAVAILABLE,
# retried) before its message is read: one client's burst of large requests is
# not buffered whole.
MAX_STREAMS_PER_CONNECTION = 4
_SPAN_KINDS = range(6)  # OTLP SpanKind: UNSPECIFIED .. CONSUMER
_STATUS_CODES = range(3)  # OTLP StatusCode: UNSET, OK, ERROR


EXPORT_RESPONSE: bytes = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class InvalidRequest(ValueError):
    """A well-formed protobuf whose content OTLP does not allow (ids, enum values)."""


class Busy(Exception):
    """The pipeline has no room for more spans now. OTLP's retryable refusal
    (UNAVAILABLE over gRPC, 503 with Retry-After over HTTP): the app's SDK keeps
    the spans and sends them again, and the collector does not grow without bound
    while its processing thread is behind."""


class OverMemory(Busy):
    """Busy because the collector's memory is above its soft limit (memory_limit)."""


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _context(trace_id: bytes, span_id: bytes, flags: int, state: str, remote: bool) -> SpanContext:
    if len(trace_id) != 16 or len(span_id) != 8:
        raise InvalidRequest("trace ids are 16 bytes and span ids 8")
    return SpanContext(
        int.from_bytes(trace_id, "big"),
        int.from_bytes(span_id, "big"),
        is_remote=remote,
        trace_flags=TraceFlags(flags & 0xFF),
        trace_state=TraceState.from_header([state]) if state else None,
    )


def spans_from_request(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReadableSpan]:
    """OTLP protobuf -> ReadableSpans, keeping ids, times, attributes, events, links,
    status; InvalidRequest for content OTLP does not allow (the request is refused whole)."""
    out: list[ReadableSpan] = []
    for rs in request.resource_spans:
        resource = Resource(_attributes(rs.resource.attributes), rs.schema_url or None)
        for ss in rs.scope_spans:
            scope = InstrumentationScope(
                ss.scope.name,
                ss.scope.version or None,
                ss.schema_url or None,
                _attributes(ss.scope.attributes) or None,
            )
            for s in ss.spans:
                out.append(_span(s, resource, scope))
    return out


def _span(s: trace_pb2.Span, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    if s.kind not in _SPAN_KINDS:
        raise InvalidRequest(f"span kind {s.kind} is not an OTLP SpanKind")
    if s.status.code not in _STATUS_CODES:
        raise InvalidRequest(f"status code {s.status.code} is not an OTLP StatusCode")
    # An exporter only sends recorded spans, and some SDKs leave the trace flags
    # out of `flags`: treat every received span as sampled, or the batch
    # processor would silently drop it.
    flags = (s.flags & 0xFF) | TraceFlags.SAMPLED
    parent = (
        _context(s.trace_id, s.parent_span_id, flags, "", remote=True) if s.parent_span_id else None
    )
    return ReadableSpan(
        name=s.name,
        context=_context(s.trace_id, s.span_id, flags, s.trace_state, remote=False),
        parent=parent,
        resource=resource,
        attributes=_attributes(s.attributes),
        events=[Event(e.name, _attributes(e.attributes), e.time_unix_nano) for e in s.events],
        links=[
            Link(
                _context(li.trace_id, li.span_id, li.flags, li.trace_state, True),
                _attributes(li.attributes),
            )
            for li in s.links
        ],
        kind=SpanKind(max(s.kind - 1, 0)),  # OTLP counts UNSPECIFIED as 0
        status=Status(StatusCode(s.status.code), s.status.message or None),
        start_time=s.start_time_unix_nano,
        end_time=s.end_time_unix_nano,
        instrumentation_scope=scope,
    )


def _plain(address: str) -> str:
    """IPv4-mapped IPv6 addresses as the kernel events show them."""
    return (
        address.removeprefix("::ffff:")
        if address.startswith("::ffff:") and "." in address
        else address
    )


def grpc_peer(peer: str) -> Endpoint | None:
    """'ipv4:127.0.0.1:5000' or 'ipv6:[::1]:5000' -> Endpoint."""
    _, _, rest = peer.partition(":")
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        return None
    return Endpoint(_plain(host.strip("[]")), int(port))


class OtlpReceiver:
    """Runs the gRPC and HTTP endpoints; `sink` receives each request's spans."""

    def __init__(
        self,
        sink: SpanSink,
        grpc_endpoint: str | None,
        http_endpoint: str | None,
        max_http_body: int = DEFAULT_MAX_BODY,
        max_grpc_message: int = DEFAULT_MAX_GRPC_MESSAGE,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        admission: Admission | None = None,
        request_timeout_s: float = 30,
    ) -> None:
        self._sink = sink
        self._admission = admission
        # seconds an HTTP request may take to arrive whole, from the last answer (an
        # idle connection is closed then; an SDK opens a new one for its next export)
        self._request_timeout_s = request_timeout_s
        self._max_concurrent_calls = max_concurrent_calls
        self._max_http_body = max_http_body
        self._max_grpc_message = max_grpc_message
        self._grpc_endpoint = grpc_endpoint
        self._http_endpoint = http_endpoint
        self._grpc: grpc.Server | None = None
        self._http: QuietHTTPServer | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.spans_received = 0
        self.requests_rejected = 0
        self.requests_busy = 0  # refused for want of room: the sender retries
        self.requests_over_memory = 0  # of those, refused by the memory limiter
        self._lock = threading.Lock()

    def _admit(self) -> None:
        """Raises OverMemory while requests are not to be decoded."""
        refusal = self._admission() if self._admission is not None else None
        if refusal is not None:
            raise OverMemory(refusal)

    def _accept(
        self, request: trace_service_pb2.ExportTraceServiceRequest, peer: OtlpSender | None
    ) -> None:
        """Raises InvalidRequest or Busy (nothing of the request is kept)."""
        spans = spans_from_request(request)
        if spans:
            self._sink(spans, peer)
        with self._lock:
            self.spans_received += len(spans)

    def _rejected(self, reason: str) -> None:
        with self._lock:
            self.requests_rejected += 1
        log.debug("OTLP request rejected: %s", reason)

    def _busy(self, exc: Busy) -> None:
        with self._lock:
            self.requests_busy += 1
            self.requests_over_memory += isinstance(exc, OverMemory)

    def start(self) -> None:
        """Bind both endpoints; raises OSError (port taken) with the address in it."""
        if self._grpc_endpoint:
            self._start_grpc(self._grpc_endpoint)
        if self._http_endpoint:
            self._start_http(self._http_endpoint)

    def _start_grpc(self, endpoint: str) -> None:
        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                self._admit()
                message = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
                client = grpc_peer(context.peer())
                self._accept(message, client and OtlpSender(client, self.grpc_port))
            except Busy as exc:
                self._busy(exc)
                code, reason = grpc.StatusCode.UNAVAILABLE, str(exc)
            except (DecodeError, InvalidRequest) as exc:
                code = grpc.StatusCode.INVALID_ARGUMENT
                reason = str(exc) if isinstance(exc, InvalidRequest) else "malformed protobuf"
            except Exception as exc:  # a bug of ours: still an answer, never a traceback
                code, reason = grpc.StatusCode.INTERNAL, f"internal error: {fault_summary(exc)}"
            else:
                return EXPORT_RESPONSE
            if code != grpc.StatusCode.UNAVAILABLE:
                self._rejected(reason)
            context.abort(code, reason)  # raises: it ends the call
            return b""  # not reached

        # Bytes in, bytes out: the request is parsed here, so a malformed one is an
        # INVALID_ARGUMENT answer rather than gRPC's INTERNAL and a logged traceback.
        # gRPC enforces the size bound on the message as received and as decompressed.
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"),
            handlers=[
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    {"Export": grpc.unary_unary_rpc_method_handler(export)},
                )
            ],
            options=[
                ("grpc.max_receive_message_length", self._max_grpc_message),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            ],
            maximum_concurrent_rpcs=self._max_concurrent_calls,
        )
        port = server.add_insecure_port(endpoint)
        if port == 0:
            raise OSError(f"OTLP/gRPC receiver cannot listen on {endpoint}")
        server.start()
        self._grpc, self.grpc_port = server, port
        log.info("OTLP/gRPC receiver listening on %s", endpoint)

    def _start_http(self, endpoint: str) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = receiver._request_timeout_s

            def do_POST(self) -> None:
                try:
                    code, message = self._handle()
                except Exception as exc:  # a bug of ours: still an answer, never a traceback
                    code, message = 500, f"internal error: {fault_summary(exc)}"
                if code not in (200, 503):  # 503: counted as busy where raised
                    receiver._rejected(message)
                body = EXPORT_RESPONSE if code == 200 else message.encode()
                self.send_response(code)
                self.send_header(
                    "Content-Type", "application/x-protobuf" if code == 200 else "text/plain"
                )
                self.send_header("Content-Length", str(len(body)))
                if code == 503:
                    self.send_header("Retry-After", "1")
                if self.close_connection:  # the body was not read: the stream is out of step
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> tuple[int, str]:
                limit = receiver._max_http_body
                over: OverMemory | None = None
                try:
                    receiver._admit()
                except OverMemory as exc:
                    over = exc  # the body is read but not kept
                try:
                    raw = read_body(self.headers, self.rfile, limit, keep=over is None)
                except Rejected as exc:
                    self.close_connection = True
                    return exc.status, exc.reason
                except TimeoutError:
                    self.close_connection = True
                    return 408, f"request body not received within {self.timeout} s"
                if over is not None:
                    receiver._busy(over)
                    return 503, str(over)
                if self.path.split("?", 1)[0] != "/v1/traces":
                    return 404, "only /v1/traces is served"
                if self.headers.get("Content-Type", "").split(";")[0] != "application/x-protobuf":
                    return 415, "send application/x-protobuf"
                try:
                    raw = decompress(raw, self.headers.get("Content-Encoding") or "", limit)
                    request = trace_service_pb2.ExportTraceServiceRequest()
                    request.ParseFromString(raw)
                    host, port = self.client_address[:2]
                    client = Endpoint(_plain(host), int(port))
                    receiver._accept(request, OtlpSender(client, receiver.http_port))
                except Rejected as exc:
                    return exc.status, exc.reason
                except Busy as exc:
                    receiver._busy(exc)
                    return 503, str(exc)
                except DecodeError as exc:
                    return 400, f"cannot decode request: {exc}"
                except InvalidRequest as exc:
                    return 400, str(exc)
                return 200, ""

            def log_message(self, *args: object) -> None:
                pass

        host, _, port = endpoint.rpartition(":")
        # An SDK keeps its connection between exports: room for every app of a busy node.
        server = QuietHTTPServer((host.strip("[]"), int(port)), Handler, max_connections=256)
        threading.Thread(target=server.serve_forever, name="otlp-http", daemon=True).start()
        self._http, self.http_port = server, int(server.server_address[1])
        log.info("OTLP/HTTP receiver listening on %s", endpoint)

    def stop(self) -> None:
        if self._grpc is not None:
            # Calls under way get 1 s, then are cancelled; a handler that still does
            # not return must not hold the exit (the shutdown guard would end it).
            if not self._grpc.stop(grace=1).wait(5):
                log.warning("OTLP/gRPC receiver: a call still under way 5 s after stop")
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
