"""Metrics: RED histograms from spans, TCP health, the service graph, self-telemetry.

One SDK MeterProvider exports through the configured metric exporters (OTLP
gRPC/HTTP, console, a Prometheus scrape endpoint). Export interval from
`OTEL_METRIC_EXPORT_INTERVAL` (the SDK reads it), temporality from
`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` (cumulative by default).

A node collector's metrics describe many processes: each data point is recorded
with its process's `service.name`, and push exporters send one resource per
service (`PerServiceResources`), as spans have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_ebpf import SCHEMA_URL, __version__
from otel_ebpf.aggregation import Aggregates, Histogram
from otel_ebpf.telemetry import SelfTelemetry

log = logging.getLogger(__name__)

# Advisory bucket boundaries from the semantic conventions (seconds).
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
# The kernel's buckets for database commands (bpf/sockets.bpf.c, red_count): the
# bounds of both, so a database histogram and the service graph come from one count.
KERNEL_BUCKETS = tuple(sorted({*HTTP_BUCKETS, *DB_BUCKETS}))


def rebin(counts: Sequence[int], bounds: Sequence[float], into: Sequence[float]) -> tuple[int, ...]:
    """Bucket counts over `bounds` (and one past them) summed into the coarser
    `into`, whose every bound is one of `bounds`."""
    out = [0] * (len(into) + 1)
    j = 0
    for i, n in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else math.inf
        while j < len(into) and into[j] < upper:
            j += 1
        out[j] += n
    return tuple(out)


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


class PerServiceResources(MetricExporter):
    """Wraps a push exporter: data points move to one resource per `service.name`
    attribute, so backends file each process's metrics under its own service, as
    they do its spans. (A Prometheus scrape keeps `service_name` as a label.)"""

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return self._inner.export(split_by_service(metrics_data), timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis, **kwargs)


def split_by_service(data: MetricsData) -> MetricsData:
    """One ResourceMetrics per service.name found on data points (the attribute
    moves to the resource); points without one stay with the collector's resource."""
    out: list[ResourceMetrics] = []
    for rm in data.resource_metrics:
        base = {k: v for k, v in rm.resource.attributes.items() if not k.startswith("service.")}
        # service -> for each scope of `rm`, its metrics with that service's points
        grouped: dict[str, list[list[Metric]]] = {}
        for i, sm in enumerate(rm.scope_metrics):
            for metric in sm.metrics:
                by_service: dict[str, list[Any]] = {}
                for point in metric.data.data_points:
                    attrs = point.attributes or {}
                    service = attrs.get("service.name")
                    if service is None:
                        by_service.setdefault("", []).append(point)
                        continue
                    rest = {k: v for k, v in attrs.items() if k != "service.name"}
                    by_service.setdefault(str(service), []).append(replace(point, attributes=rest))
                for service, points in by_service.items():
                    scopes = grouped.setdefault(service, [[] for _ in rm.scope_metrics])
                    part: Any = replace(metric.data, data_points=points)  # type: ignore[arg-type]
                    scopes[i].append(replace(metric, data=part))
        for service, scopes in grouped.items():
            resource = rm.resource if not service else Resource({**base, "service.name": service})
            out.append(
                ResourceMetrics(
                    resource,
                    [
                        ScopeMetrics(sm.scope, metrics, sm.schema_url)
                        for sm, metrics in zip(rm.scope_metrics, scopes, strict=True)
                        if metrics
                    ],
                    rm.schema_url,
                )
            )
    return MetricsData(out)


class CollectorMetrics:
    """The instruments, and the one place that names and shapes them."""

    def __init__(self, readers: Iterable[MetricReader], telemetry: SelfTelemetry) -> None:
        resource = Resource.create({"service.name": "otel-ebpf"})
        readers = list(readers)
        self.provider = MeterProvider(metric_readers=readers, resource=resource)
        meter = self.provider.get_meter("otel-ebpf", __version__, schema_url=SCHEMA_URL)
        # Measured per request: aggregated by our own instruments (otel_ebpf.aggregation);
        # observed at collection (callbacks below): the SDK's.
        aggregates = Aggregates(
            resource, InstrumentationScope("otel-ebpf", __version__, SCHEMA_URL)
        )
        self._telemetry = telemetry
        # the instruments' one lock: held once for all of a span's measurements
        self.lock = aggregates.lock

        def hist(name: str, description: str, buckets: tuple[float, ...]) -> Histogram:
            return aggregates.histogram(name, "s", description, buckets)

        counter = aggregates.counter

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
        # TCP health, per (service, peer address, server port, direction): counted
        # in the kernel and totalled by processors.tcp_health, which sets tcp_series.
        self.tcp_series: Callable[[str], list[Observation]] = lambda _metric: []
        for name, unit, description in (
            (
                "otel_ebpf.tcp.connections.opened",
                "{connection}",
                "Connections established (direction: active = connect, passive = accept)",
            ),
            (
                "otel_ebpf.tcp.connections.failed",
                "{connection}",
                "Failed connections, by otel_ebpf.tcp.failure: refused, timeout, unreachable "
                "(connects), reset (established, then reset by the peer)",
            ),
            ("otel_ebpf.tcp.retransmits", "{segment}", "Segments retransmitted"),
            (
                "otel_ebpf.tcp.resets",
                "{reset}",
                "RSTs, by network.io.direction (transmit = sent, receive = received)",
            ),
            ("otel_ebpf.tcp.bytes", "By", "Payload bytes, by network.io.direction"),
        ):
            meter.create_observable_counter(
                name,
                callbacks=[partial(self._tcp, name)],
                unit=unit,
                description=description,
            )
        self.misconfigurations = counter(
            "otel_ebpf.tcp.misconfigurations",
            "{report}",
            "Socket settings that do not take (otel_ebpf.tcp.misconfiguration), "
            "once per process and port",
        )
        self.listen_overflows = counter(
            "otel_ebpf.tcp.listen_overflows",
            "{connection}",
            "Handshakes dropped for a full accept queue, per network namespace "
            "(otel_ebpf.netns; service.name when one traced service is in it)",
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
        # Which hop is slow, per edge, without opening a trace (client spans).
        self.graph_split = hist(
            "otel_ebpf.service_graph.request.time",
            "An edge's request time, by otel_ebpf.time.part: server or network",
            HTTP_BUCKETS,
        )
        self.graph_verdicts = counter(
            "otel_ebpf.service_graph.verdicts",
            "{request}",
            "An edge's requests, by otel_ebpf.verdict (where most of the time went)",
        )
        for create, name, callback, unit, description in (
            (
                meter.create_observable_counter,
                "otel_ebpf.collector.events",
                self._events,
                "{event}",
                "Kernel events, by state (received, lost)",
            ),
            (
                meter.create_observable_counter,
                "otel_ebpf.collector.spans",
                self._spans,
                "{span}",
                "Spans, by state (built, exported, export_failed, dropped, merged_away; "
                "shed, shed_backlog, shed_uncounted: requests the span budget gave none)",
            ),
            (
                meter.create_observable_counter,
                "otel_ebpf.collector.profile.samples",
                self._profile_samples,
                "{sample}",
                "CPU profile samples, by state (counted; lost: no room in the kernel's map; "
                "stack_lost: counted without their stack)",
            ),
            (
                meter.create_observable_counter,
                "otel_ebpf.collector.profiles",
                self._profiles,
                "{profile}",
                "Profiles (one per exporter and interval), by state (exported, export_failed)",
            ),
            (
                meter.create_observable_gauge,
                "otel_ebpf.collector.queue.size",
                self._queued,
                "{span}",
                "Spans waiting in the export queues",
            ),
            (
                meter.create_observable_gauge,
                "otel_ebpf.collector.cpu",
                self._cpu,
                "{cpu}",
                "Cores the collector used over the span budget's last second (state=used) "
                "and what the budget allowed it (state=allowed; 0: no adaptive budget)",
            ),
            (
                meter.create_observable_counter,
                "otel_ebpf.collector.otlp.requests",
                self._otlp_refusals,
                "{request}",
                "Apps' OTLP requests answered 'retry later' or refused, by state (busy: too "
                "many spans waiting; over_memory: above the memory limiter's soft limit; "
                "refused: malformed or too large)",
            ),
            (
                meter.create_observable_gauge,
                "otel_ebpf.collector.memory",
                self._memory,
                "By",
                "The collector's resident memory (state=resident), and the memory limiter's "
                "soft limit and limit (state=soft_limit, limit) when it has one",
            ),
            (
                meter.create_observable_gauge,
                "otel_ebpf.collector.connections",
                self._connections,
                "{connection}",
                "Connections tracked now",
            ),
        ):
            create(name, callbacks=[callback], unit=unit, description=description)
        self.tracked_connections = 0
        aggregates.attach(readers)

    def _tcp(self, metric: str, _options: CallbackOptions) -> list[Observation]:
        return self.tcp_series(metric)

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
            Observation(t.requests_shed, {"state": "shed"}),
            Observation(t.requests_shed_backlog, {"state": "shed_backlog"}),
            Observation(t.requests_shed_uncounted, {"state": "shed_uncounted"}),
        ]

    def _profile_samples(self, _options: CallbackOptions) -> list[Observation]:
        t = self._telemetry
        return [
            Observation(t.profile_samples, {"state": "counted"}),
            Observation(t.profile_samples_lost, {"state": "lost"}),
            Observation(t.profile_stacks_lost, {"state": "stack_lost"}),
        ]

    def _profiles(self, _options: CallbackOptions) -> list[Observation]:
        t = self._telemetry
        return [
            Observation(t.profiles_exported, {"state": "exported"}),
            Observation(t.profiles_export_failed, {"state": "export_failed"}),
        ]

    def _queued(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._telemetry.spans_queued)]

    def _cpu(self, _options: CallbackOptions) -> list[Observation]:
        t = self._telemetry
        return [
            Observation(t.collector_cpu_millicores / 1000, {"state": "used"}),
            Observation(t.span_budget_allowed_millicores / 1000, {"state": "allowed"}),
        ]

    def _otlp_refusals(self, _options: CallbackOptions) -> list[Observation]:
        t = self._telemetry
        return [
            Observation(t.otlp_requests_busy - t.otlp_requests_over_memory, {"state": "busy"}),
            Observation(t.otlp_requests_over_memory, {"state": "over_memory"}),
            Observation(t.otlp_requests_refused, {"state": "refused"}),
        ]

    def _memory(self, _options: CallbackOptions) -> list[Observation]:
        t = self._telemetry
        out = [Observation(t.memory_resident_mib << 20, {"state": "resident"})]
        if t.memory_limit_mib:
            out.append(Observation(t.memory_soft_limit_mib << 20, {"state": "soft_limit"}))
            out.append(Observation(t.memory_limit_mib << 20, {"state": "limit"}))
        return out

    def _connections(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self.tracked_connections)]

    def shutdown(self, timeout_s: float = 30.0) -> None:
        try:
            self.provider.shutdown(timeout_millis=timeout_s * 1000)
        except Exception as exc:  # a failing final export must not hide the exit
            log.warning("metrics shutdown: %s", exc)


def periodic_reader(exporter: MetricExporter) -> MetricReader:
    """Exports every OTEL_METRIC_EXPORT_INTERVAL ms (60 s by default), as the SDK reads it."""
    return PeriodicExportingMetricReader(exporter)


def scan_interval_s(env: dict[str, str]) -> float:
    """How often live connections' counters are read: often enough that every export
    (OTEL_METRIC_EXPORT_INTERVAL, 60 s by default) has fresh ones, at most every 5 s."""
    try:
        export_s = float(env.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")) / 1000
    except ValueError:
        export_s = 60.0
    return min(max(export_s / 2, 0.5), 5.0)
