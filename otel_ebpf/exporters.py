"""Span exporters: OTLP gRPC and HTTP (opentelemetry-exporter-otlp), console lines, OTLP-JSON file.

The OTLP exporters are the SDK's own, so the standard OTEL_EXPORTER_OTLP_*
variables apply to whatever the YAML leaves unset, and their transports keep
headers, compression, certificates, timeouts and retries. Only the encoding is
ours (`otlp_encoding`, several times faster than the SDK's): the gRPC exporter
sends the bytes through a pass-through stub, the HTTP exporter hands them to
its client. An SDK whose internals moved keeps its own encoder (`fast_path`
says which ran; a test holds it on the version installed).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, Final, cast

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as SdkGrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from otel_ebpf.config import (
    DebugExporterConfig,
    FileExporterConfig,
    OtlpExporterConfig,
)
from otel_ebpf.model import FinishedSpan
from otel_ebpf.otlp_encoding import TraceEncoder
from otel_ebpf.telemetry import SelfTelemetry

log = logging.getLogger(__name__)
_TRACE_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# A batch goes to the backend in requests of at most this many bytes: what a
# gRPC server takes by default (the Collector's and Jaeger's OTLP receivers).
# A batch of apps' large spans was one request the backend refused whole, and
# was held encoded whole beside the spans.
MAX_REQUEST_BYTES: Final = 4 << 20


def send_in_requests(
    encoder: TraceEncoder,
    spans: Sequence[FinishedSpan],
    max_bytes: int,
    send: Callable[[bytes, Sequence[FinishedSpan]], bool],
) -> int:
    """Sends the spans as requests of at most `max_bytes`, in order; returns how
    many were delivered. Past a refused request the rest are not tried (the
    backend is down, or says so) unless it was one span larger than the bound
    alone: a backend refuses that span, not the others."""
    delivered = at = 0
    for body, count in encoder.requests(spans, max_bytes):
        if send(body, spans[at : at + count]):
            delivered += count
        elif count > 1 or len(body) <= max_bytes:
            break
        at += count
    return delivered


def sdk_view(spans: Sequence[FinishedSpan]) -> Sequence[ReadableSpan]:
    """Spans as the SDK's exporters take them: a BuiltSpan has every field their
    readers use (tests hold the SDK's encoder to the same output as ours)."""
    return cast(Sequence[ReadableSpan], spans)


def _line(span: FinishedSpan, verbosity: str) -> str:
    a = span.attributes or {}
    start = datetime.datetime.fromtimestamp((span.start_time or 0) / 1e9, datetime.UTC)
    ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    service = span.resource.attributes.get("service.name", "?")
    kind = "SERVER" if span.kind == SpanKind.SERVER else "CLIENT"
    target = f"{a.get('url.path', '')}" + (f"?{a['url.query']!s}" if "url.query" in a else "")
    status = a.get("http.response.status_code", a.get("error.type", "-"))
    peer = f"{a.get('network.peer.address', '?')}:{a.get('network.peer.port', '?')}"
    arrow = "<-" if span.kind == SpanKind.SERVER else "->"
    err = " ERROR" if span.status.status_code == StatusCode.ERROR else ""
    line = (
        f"{start.isoformat(timespec='milliseconds').replace('+00:00', 'Z')} {kind} "
        f"{service}[{span.resource.attributes.get('process.pid', '?')}] "
        f"{span.name} {target} {status} {ms:.2f}ms {arrow} {peer}{err}"
    )
    if verbosity != "basic":
        ctx = span.get_span_context()
        assert ctx is not None
        line += f" trace={ctx.trace_id:032x} span={ctx.span_id:016x}"
        if span.parent is not None:
            line += f" parent={span.parent.span_id:016x}"
    if verbosity == "detailed":
        line += " " + json.dumps(dict(a), sort_keys=True)
    return line


class ConsoleLineExporter(SpanExporter):
    """One readable line per span, for people watching `otel-ebpf run`."""

    def __init__(self, verbosity: str = "normal", out: IO[str] | None = None) -> None:
        self._verbosity = verbosity
        self._out = out or sys.stdout
        self._lock = threading.Lock()

    def export(self, spans: Sequence[FinishedSpan]) -> SpanExportResult:
        text = "".join(_line(s, self._verbosity) + "\n" for s in spans)
        with self._lock:
            self._out.write(text)
            self._out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _hex_ids(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex, where protobuf JSON uses base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                import base64

                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)
    return node


def otlp_json(spans: Sequence[FinishedSpan]) -> str:
    """An ExportTraceServiceRequest in the OTLP/JSON encoding, one line."""
    request = ExportTraceServiceRequest.FromString(TraceEncoder().encode(spans))
    body = MessageToDict(request, use_integers_for_enums=True)
    return json.dumps(_hex_ids(body), separators=(",", ":"))


class JsonLinesFileExporter(SpanExporter):
    """Appends one OTLP/JSON request per batch (the collector file exporter's format)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open
        self._lock = threading.Lock()

    def export(self, spans: Sequence[FinishedSpan]) -> SpanExportResult:
        line = otlp_json(spans) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


class _PreEncodedTraceStub:
    """TraceService's Export for requests already encoded: bytes go out as they are."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(
            _TRACE_EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )


class GrpcSpanExporter(SdkGrpcExporter):
    """The SDK's OTLP/gRPC exporter (channel, credentials, retries) with our encoder."""

    def __init__(self, **kwargs: Any) -> None:
        self._encoder = TraceEncoder()
        self.fast_path = hasattr(SdkGrpcExporter, "_initialize_channel_and_stub")
        self.delivered = 0  # spans of the last export call delivered (all, at SUCCESS)
        self._request: bytes | None = None  # the encoded request being sent
        super().__init__(**kwargs)
        if not self.fast_path:
            log.info("this opentelemetry-exporter-otlp encodes spans itself (slower)")

    def _initialize_channel_and_stub(self) -> None:  # also called to reconnect
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        if self.fast_path:
            self._client = _PreEncodedTraceStub(self._channel)  # type: ignore[assignment]

    def export(self, spans: Sequence[FinishedSpan]) -> SpanExportResult:
        if not self.fast_path:
            return super().export(sdk_view(spans))

        def send(request: bytes, part: Sequence[FinishedSpan]) -> bool:
            self._request = request  # each retry sends it again, not encoded again
            sent = super(GrpcSpanExporter, self).export(cast(Sequence[ReadableSpan], part))
            return sent == SpanExportResult.SUCCESS

        try:
            self.delivered = send_in_requests(self._encoder, spans, MAX_REQUEST_BYTES, send)
        finally:
            self._request = None
        ok = self.delivered == len(spans)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def _translate_data(self, data: Sequence[FinishedSpan]) -> Any:
        if self._request is not None:
            return self._request
        if self.fast_path:
            return self._encoder.encode(data)
        return super()._translate_data(sdk_view(data))


class HttpSpanExporter(SdkHttpExporter):
    """The SDK's OTLP/HTTP exporter (session, compression, retries) with our encoder."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = TraceEncoder()
        self.delivered = 0  # spans of the last export call delivered (all, at SUCCESS)
        client = getattr(self, "_client", None)
        self.fast_path = callable(getattr(client, "export", None))
        if not self.fast_path:
            log.info("this opentelemetry-exporter-otlp encodes spans itself (slower)")

    def export(self, spans: Sequence[FinishedSpan]) -> SpanExportResult:
        if not self.fast_path or self._shutdown:
            return super().export(sdk_view(spans))
        limit = getattr(self, "_max_request_size", 0)

        def send(request: bytes, part: Sequence[FinishedSpan]) -> bool:
            if limit > 0 and len(request) > limit:
                log.warning(
                    "dropping %d spans: %d bytes encoded, over max_request_size %d",
                    len(part),
                    len(request),
                    limit,
                )
                return False
            return bool(self._client.export(request).success)

        bound = min(limit, MAX_REQUEST_BYTES) if limit > 0 else MAX_REQUEST_BYTES
        self.delivered = send_in_requests(self._encoder, spans, bound, send)
        ok = self.delivered == len(spans)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class CountingExporter(SpanExporter):
    """Counts what each exporter delivered or failed, for self-telemetry. At a
    shutdown that cannot wait, the batch being sent is given up (`abandon`): it
    counts as dropped, and its late outcome is not counted again."""

    def __init__(self, inner: SpanExporter, telemetry: SelfTelemetry) -> None:
        self.inner = inner
        self._telemetry = telemetry
        self._lock = threading.Lock()
        self._in_flight = 0
        self._abandoned = False

    def export(self, spans: Sequence[FinishedSpan]) -> SpanExportResult:
        with self._lock:
            if self._abandoned:
                return SpanExportResult.FAILURE  # counted by abandon()'s caller
            self._in_flight = len(spans)
        try:
            result = self.inner.export(sdk_view(spans))
        except Exception:  # an exporter bug must not kill the export thread
            result = SpanExportResult.FAILURE
        with self._lock:
            self._in_flight = 0
            if self._abandoned:
                return result
            # an exporter that splits a batch in requests says how many went out
            delivered = (
                len(spans)
                if result == SpanExportResult.SUCCESS
                else getattr(self.inner, "delivered", 0)
            )
            self._telemetry.spans_exported += delivered
            self._telemetry.spans_export_failed += len(spans) - delivered
        return result

    def abandon(self) -> int:
        """Stop counting; the spans of the batch under way now, to count as dropped."""
        with self._lock:
            self._abandoned = True
            return self._in_flight

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def build_exporter(key: str, cfg: object) -> SpanExporter:
    kind = key.split("/", 1)[0]
    if kind == "debug":
        assert isinstance(cfg, DebugExporterConfig)
        return ConsoleLineExporter(cfg.verbosity)
    if kind == "file":
        assert isinstance(cfg, FileExporterConfig)
        return JsonLinesFileExporter(cfg.path)
    assert isinstance(cfg, OtlpExporterConfig)
    kwargs: dict[str, Any] = {}
    if cfg.endpoint:
        kwargs["endpoint"] = cfg.endpoint
    if cfg.headers is not None:
        kwargs["headers"] = cfg.headers
    if cfg.timeout is not None:
        kwargs["timeout"] = cfg.timeout
    if kind == "otlp":
        from grpc import Compression

        if cfg.compression is not None:
            kwargs["compression"] = (
                Compression.Gzip if cfg.compression == "gzip" else Compression.NoCompression
            )
        if cfg.insecure is not None:
            kwargs["insecure"] = cfg.insecure
        return GrpcSpanExporter(**kwargs)
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

    if cfg.compression is not None:
        kwargs["compression"] = (
            HttpCompression.Gzip if cfg.compression == "gzip" else HttpCompression.NoCompression
        )
    return HttpSpanExporter(**kwargs)
