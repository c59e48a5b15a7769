"""Metrics: RED histograms from spans, TCP health, the service graph, self-telemetry.

One SDK MeterProvider exports through the configured metric exporters (OTLP
gRPC/HTTP, console, a Prometheus scrape endpoint). Export interval from
`OTEL_METRIC_EXPORT_INTERVAL` (the SDK reads it), temporality from
`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (cumulative by default).

A node collector's metrics describe many processes; each data point names its
process's `service.name` (span resources stay per process).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from otel_ebpf import SCHEMA_URL, __version__
from otel_ebpf.telemetry import SelfTelemetry

log = logging.getLogger(__name__)

# Advisory bucket boundaries from the semantic conventions (seconds).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
Attributes = dict[str, str | int | bool]


def metric_exporter(key: str, cfg: Any) -> MetricExporter | None:
    """The metric exporter for a configured exporter (None for kinds without one)."""
    kind = key.split("/", 1)[0]
    kwargs: dict[str, Any] = {}
    endpoint = getattr(cfg, "endpoint", None)
    headers = getattr(cfg, "headers", None)
    if headers is not None:
        kwargs["headers"] = headers
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        if endpoint:
            kwargs["endpoint"] = endpoint
        if getattr(cfg, "insecure", None) is not None:
            kwargs["insecure"] = cfg.insecure
        return OTLPMetricExporter(**kwargs)
    if kind == "otlphttp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        if endpoint:  # the traces URL names the collector; metrics go to its /v1/metrics
            base = endpoint.removesuffix("/v1/traces").rstrip("/")
            kwargs["endpoint"] = f"{base}/v1/metrics"
        return HttpMetricExporter(**kwargs)
    if kind == "debug":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    return None


class CollectorMetrics:
    """The instruments, and the one place that names and shapes them."""

    def __init__(self, readers: Iterable[MetricReader], telemetry: SelfTelemetry) -> None:
        resource = Resource.create({"service.name": "otel-ebpf"})
        self.provider = MeterProvider(metric_readers=list(readers), resource=resource)
        meter = self.provider.get_meter("otel-ebpf", __version__, schema_url=SCHEMA_URL)
        self._telemetry = telemetry

        def hist(name: str, description: str, buckets: tuple[float, ...]) -> Any:
            return meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )

        def counter(name: str, unit: str, description: str) -> Any:
            return meter.create_counter(name, unit=unit, description=description)

        self.http_server = hist(
            "http.server.request.duration", "HTTP server requests", HTTP_BUCKETS
        )
        self.http_client = hist(
            "http.client.request.duration", "HTTP client requests", HTTP_BUCKETS
        )
        self.db_client = hist("db.client.operation.duration", "Database operations", DB_BUCKETS)
        self.rpc_server = hist("rpc.server.call.duration", "RPCs served", HTTP_BUCKETS)
        self.rpc_client = hist("rpc.client.call.duration", "RPCs made", HTTP_BUCKETS)
        self.dns_lookup = hist("dns.lookup.duration", "DNS lookups", HTTP_BUCKETS)
        # TCP health, per (service, peer address, peer port, direction)
        self.tcp_opened = counter(
            "otel_ebpf.tcp.connections.opened",
            "{connection}",
            "Connections established (direction: active = connect, passive = accept)",
        )
        self.tcp_failed = counter(
            "otel_ebpf.tcp.connections.failed",
            "{connection}",
            "Failed connects, by otel_ebpf.tcp.failure (refused, timeout, unreachable)",
        )
        self.tcp_retransmits = counter(
            "otel_ebpf.tcp.retransmits", "{segment}", "Segments retransmitted"
        )
        self.tcp_resets = counter(
            "otel_ebpf.tcp.resets",
            "{reset}",
            "RSTs, by network.io.direction (transmit = sent, receive = received)",
        )
        self.tcp_bytes = counter(
            "otel_ebpf.tcp.bytes", "By", "Payload bytes, by network.io.direction"
        )
        self.tcp_duration = hist(
            "otel_ebpf.tcp.connection.duration", "Connection lifetimes", HTTP_BUCKETS
        )
        self.tcp_rtt = hist("otel_ebpf.tcp.rtt", "Smoothed RTT at close", DB_BUCKETS)
        # Service graph (the names Tempo's and the Collector's servicegraph use)
        self.graph_requests = counter(
            "traces_service_graph_request_total", "{request}", "Requests between two services"
        )
        self.graph_failed = counter(
            "traces_service_graph_request_failed_total",
            "{request}",
            "Failed requests between two services",
        )
        self.graph_server = hist(
            "traces_service_graph_request_server_seconds", "Server-side latency", HTTP_BUCKETS
        )
        self.graph_client = hist(
            "traces_service_graph_request_client_seconds", "Client-side latency", HTTP_BUCKETS
        )
        meter.create_observable_counter(
            "otel_ebpf.collector.events",
            callbacks=[self._events],
            unit="{event}",
            description="Kernel events, by state (received, lost)",
        )
        meter.create_observable_counter(
            "otel_ebpf.collector.spans",
            callbacks=[self._spans],
            unit="{span}",
            description="Spans, by state (built, exported, export_failed, dropped, merged_away)",
        )
        meter.create_observable_gauge(
            "otel_ebpf.collector.connections",
            callbacks=[self._connections],
            unit="{connection}",
            description="Connections tracked now",
        )
        self.tracked_connections = 0

    def _events(self, _options: CallbackOptions) -> list[Observation]:
        t = self._telemetry
        return [
            Observation(t.events_received, {"state": "received"}),
            Observation(t.events_lost, {"state": "lost"}),
        ]

    def _spans(self, _options: CallbackOptions) -> list[Observation]:
        t = self._telemetry
        return [
            Observation(t.spans_built, {"state": "built"}),
            Observation(t.spans_exported, {"state": "exported"}),
            Observation(t.spans_export_failed, {"state": "export_failed"}),
            Observation(t.spans_dropped, {"state": "dropped"}),
            Observation(t.spans_merged_away, {"state": "merged_away"}),
        ]

    def _connections(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self.tracked_connections)]

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception as exc:  # a failing final export must not hide the exit
            log.warning("metrics shutdown: %s", exc)


def periodic_reader(exporter: MetricExporter) -> MetricReader:
    """Exports every OTEL_METRIC_EXPORT_INTERVAL ms (60 s by default), as the SDK reads it."""
    return PeriodicExportingMetricReader(exporter)
