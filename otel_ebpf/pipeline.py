"""Wiring: socket receiver -> stream tracker -> span builder -> batch processors -> exporters."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from otel_ebpf import native
from otel_ebpf.backlog import ListenOverflows
from otel_ebpf.config import Config, ConfigError, span_batching
from otel_ebpf.containers import PodScope
from otel_ebpf.export_room import QueueRoom
from otel_ebpf.exporters import CountingExporter, build_exporter
from otel_ebpf.health import HealthServer, HealthState
from otel_ebpf.http_server import serve_prometheus
from otel_ebpf.kubernetes import KubeMetadata, WorkloadIdentity
from otel_ebpf.live import LiveView
from otel_ebpf.memory import settle_heap, trim_heap
from otel_ebpf.memory_limit import MIB, MemoryLimiter, resident_bytes
from otel_ebpf.metrics import (
    CollectorMetrics,
    PerServiceResources,
    metric_exporter,
    periodic_reader,
    scan_interval_s,
)
from otel_ebpf.model import (
    BuiltSpan,
    ConnClose,
    ConnOpen,
    DataEvent,
    Endpoint,
    Exchange,
    FinishedSpan,
    OtlpSender,
    OutlierExchange,
    ProcessExec,
    RedCount,
    ResetSent,
    Role,
    SocketBufferSet,
)
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.budget import SpanBudget, adjusted_count
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.correlate import RequestContext
from otel_ebpf.processors.merge import Merger
from otel_ebpf.processors.metrics_recorder import MetricsRecorder
from otel_ebpf.processors.misconfig import Misconfigurations
from otel_ebpf.processors.redaction import UrlRedactor
from otel_ebpf.processors.routes import RouteTemplates
from otel_ebpf.processors.selection import Selector, parse_ports
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.processors.tcp_health import TcpHealth
from otel_ebpf.profile_exporters import build_profile_exporter
from otel_ebpf.profiling import READ_INTERVAL_S, ProfilingService, SpanTies
from otel_ebpf.receivers.asyncio_tasks import AsyncioProbes
from otel_ebpf.receivers.base_types import ReceiverError
from otel_ebpf.receivers.goroutines import GoProbes
from otel_ebpf.receivers.node_callbacks import NodeProbes
from otel_ebpf.receivers.otlp import DEFAULT_MAX_GRPC_MESSAGE, Busy, OtlpReceiver
from otel_ebpf.receivers.otlp_body import DEFAULT_MAX_BODY
from otel_ebpf.receivers.profiler import CpuProfiler
from otel_ebpf.receivers.ringbuf import DRAIN_INTERVAL_S, next_drain_wait
from otel_ebpf.receivers.sockets import SocketReceiver, task_registers_missing
from otel_ebpf.receivers.tls import OpenSslProbes
from otel_ebpf.scheduling import name_threads
from otel_ebpf.span_batches import SpanBatcher
from otel_ebpf.span_budget import SpanBudgetKeeper, budget_settings
from otel_ebpf.telemetry import SelfTelemetry, fault_summary

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S: Final = 60.0
FLUSH_TIMEOUT_S: Final = 3.0  # the final export at SIGTERM: exit stays well inside a 30 s grace
SWEEP_INTERVAL_S: Final = 30.0
CLOCK_WARNING_INTERVAL_S: Final = 60.0  # a clock stepping every second logs once a minute
# Spans from apps' SDKs waiting for the processing thread, past which further
# requests are answered "retry later" (OTLP's UNAVAILABLE / 503): 16 of the SDK's
# default batches, some 16 MiB of spans, while the processing thread is behind.
OTLP_WAITING_LIMIT: Final = 8192
# The span budget's first look, then once a second: a collector started on a
# busy node captures every request until it first weighs its CPU.
FIRST_BUDGET_LOOK_S: Final = 0.25


def _collector_resource_attributes() -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES of the collector apply to every process it reports
    (deployment.environment and the like); service.name stays per process."""
    attrs: dict[str, str] = {}
    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() and key.strip() != "service.name":
            attrs[key.strip()] = value.strip()
    return attrs


def _selector(config: Config, scope: PodScope | None) -> Selector:
    ebpf = config.ebpf
    return Selector(
        scope=scope,
        include_pids=frozenset(ebpf.include.pids),
        exclude_pids=frozenset(ebpf.exclude.pids),
        include_executables=tuple(ebpf.include.executables),
        exclude_executables=tuple(ebpf.exclude.executables),
        ports=tuple(parse_ports(ebpf.open_ports)),
    )


def _kube_metadata(config: Config) -> KubeMetadata | None:
    """The pod metadata source: in a pod (or with an API URL) unless turned off."""
    k8s = config.ebpf.kubernetes
    if k8s.metadata == "false":
        return None
    kube = KubeMetadata.from_environment(os.environ, k8s.api, k8s.node_name)
    if kube is None and k8s.metadata == "true":
        raise ConfigError(
            "receivers.ebpf.kubernetes.metadata is true but this is not a pod "
            "(no KUBERNETES_SERVICE_HOST): set receivers.ebpf.kubernetes.api"
        )
    return kube


def _pod_scope(config: Config) -> PodScope | None:
    """mode: sidecar -> the processes of the collector's own pod only."""
    ebpf = config.ebpf
    if ebpf.mode != "sidecar":
        return None
    try:
        return PodScope(ebpf.sidecar.network_namespace, ebpf.sidecar.cgroup)
    except OSError as exc:
        raise ConfigError(f"receivers.ebpf.sidecar.network_namespace: {exc}") from None


def _metric_readers(config: Config) -> list[MetricReader]:
    """One reader per metrics exporter: periodic export, or a Prometheus scrape endpoint."""
    readers: list[MetricReader] = []
    for name in config.service.pipelines["metrics"].exporters:
        cfg = config.exporters[name]
        if name.split("/", 1)[0] == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            host, _, port = cfg.endpoint.rpartition(":")
            serve_prometheus(host.strip("[]"), int(port))
            log.info("Prometheus metrics on http://%s/metrics", cfg.endpoint)
            readers.append(PrometheusMetricReader())
            continue
        exporter = metric_exporter(name, cfg)
        if exporter is not None:
            readers.append(periodic_reader(PerServiceResources(exporter)))
    return readers


def _profiling_service(
    config: Config,
    processes: ProcessRegistry,
    selector: Selector,
    telemetry: SelfTelemetry,
    ties: SpanTies | None,
) -> ProfilingService:
    """The profiles pipeline: samples labelled as the spans of their process are,
    of the processes the spans are selected from."""
    settings = config.profiling
    assert settings is not None

    def resource_of(pid: int, comm: str) -> dict[str, object]:
        return dict(processes.get(pid, comm.encode()).resource.attributes)

    def include(pid: int, comm: str) -> bool:
        return selector.process_selected(pid, processes.get(pid, comm.encode()).executable_name)

    return ProfilingService(
        CpuProfiler(
            settings.frequency, READ_INTERVAL_S, tie_in=ties is not None, off_cpu=settings.off_cpu
        ),
        settings.interval,
        [
            build_profile_exporter(key, config.exporters[key], settings.frequency)
            for key in config.service.pipelines["profiles"].exporters
        ],
        telemetry,
        resource_of=resource_of,
        include=include,
        ties=ties,
    )


def _seconds_since_start() -> float:
    """Since this process started, on the kernel's boot clock (psutil's
    create_time adds the boot time in whole seconds: up to a second over)."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    start_ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])  # field 22, starttime
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


class Collector:
    """One running collector. `run()` blocks until `stop()`; safe to stop from a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.telemetry = SelfTelemetry()
        self._faults_said: set[tuple[str, str]] = set()  # periodic work's, logged whole once
        self.live = LiveView()
        self.health = HealthState(self.telemetry, self.live)
        self._stop = threading.Event()
        self.stopping_at = "the event loop"  # the shutdown step under way, for its guard
        pipeline = config.traces
        self._exporters = [
            CountingExporter(build_exporter(name, config.exporters[name]), self.telemetry)
            for name in pipeline.exporters
        ]
        batching = span_batching(config, dict(os.environ))
        self._batchers = [SpanBatcher(e, batching) for e in self._exporters]
        self._rooms = [QueueRoom(b.queue) for b in self._batchers]
        # each batcher with its room, paired once: a span's hand-off walks a list
        self._outlets = list(zip(self._batchers, self._rooms, strict=True))
        ebpf = config.ebpf
        correlate = config.correlate
        self.merger = (
            Merger(self._export, correlate.hold, correlate.keep_duplicates) if correlate else None
        )
        # OTLP batches arrive on receiver threads; the processing thread merges them.
        self._otlp_batches: queue.SimpleQueue[tuple[list[ReadableSpan], OtlpSender | None]] = (
            queue.SimpleQueue()
        )
        self._otlp_waiting = 0  # spans in _otlp_batches
        self._otlp_waiting_lock = threading.Lock()
        self._otlp_busy_logged = float("-inf")
        self._unknown_sdk_logged = float("-inf")  # when an unknown SDK process was last logged
        pipelines = config.service.pipelines
        # a profiles-only collector loads no socket probes
        self._ebpf_enabled = "ebpf" in pipeline.receivers and (
            "traces" in pipelines or "metrics" in pipelines
        )
        profiling = config.profiling
        # samples tied to the spans they were taken under: spans must leave, and
        # the kernel must count HTTP/1 (it keeps which thread reads which request)
        tie_in = bool(
            profiling and profiling.span_tie_in and self._ebpf_enabled and pipeline.exporters
        )
        budget = SpanBudget(budget_settings(ebpf.span_budget, spans_leave=bool(self._exporters)))
        self.receiver = SocketReceiver(
            self._on_kernel_event,
            capture_bytes=ebpf.capture_bytes,
            ring_buffer_pages=ebpf.ring_buffer_pages,
            max_connections=ebpf.max_connections,
            dns_ports=[53, *(p for p, name in ebpf.protocols.ports.items() if name == "dns")],
            # the budget decides at the requests the kernel counts
            count_http="metrics" in config.service.pipelines
            or budget.adaptive
            or budget.threshold > 0
            or tie_in,
            serving_threads=tie_in,
            program_cache=ebpf.program_cache,
        )
        self.budget = SpanBudgetKeeper(
            budget,
            self.receiver,
            self.telemetry,
            lambda pid: self._processes.get(pid).service_name,
            spans_leave=bool(self._exporters),
        )
        self.misconfigurations = Misconfigurations()
        self.backlogs = ListenOverflows()
        self._spans = SpanBuilder(
            raw_db_query_text=ebpf.protocols.db_query_text == "raw",
            urls=UrlRedactor(ebpf.redaction.query_keys),
            misconfigured=self.misconfigurations.at,
            nodelay=self.receiver.tcp_nodelay,
        )
        self._kube = _kube_metadata(config)
        self._processes = ProcessRegistry(
            extra_attributes=_collector_resource_attributes(),
            identity=WorkloadIdentity(self._kube),
            command_line=ebpf.resource_attributes.command_line.enabled,
            command_args=ebpf.resource_attributes.command_args.enabled,
            exec_service_name=self.receiver.exec_service_name,
        )
        scope = self._scope = _pod_scope(config)
        selector = _selector(config, scope)
        self.tracker = ConnectionTracker(
            self._on_exchange,
            self._processes,
            selector,
            self.telemetry,
            set_quiet=self.receiver.set_quiet,
            max_connections=ebpf.max_connections,
            quiet_threshold=4 * ebpf.capture_bytes,
            is_sdk_process=self.merger.is_sdk_process if self.merger else None,
            protocol_ports=dict(ebpf.protocols.ports),
            dns_timeout_s=ebpf.protocols.dns_timeout,
            on_unseen_tls=self._unseen_tls,
            read_retransmits=self.receiver.retransmits_of,
        )
        self.tls = OpenSslProbes(self.receiver.attach_openssl, self.receiver.detach_openssl)

        def selected(pid: int) -> bool:
            return selector.process_selected(pid, self._processes.get(pid).executable_name)

        self.goroutines: GoProbes | None = None
        missing = task_registers_missing() if ebpf.go_goroutines else None
        if missing:
            log.info("Go: no goroutine context on this machine: %s", missing)
        elif ebpf.go_goroutines:
            self.goroutines = GoProbes(
                self.receiver.attach_go,
                self.receiver.detach_go,
                self.receiver.register_go,
                selected,
            )
        self.asyncio: AsyncioProbes | None = None
        if ebpf.python_asyncio:
            self.asyncio = AsyncioProbes(
                self.receiver.attach_uprobes, self.receiver.detach_uprobes, selected
            )
        self.node: NodeProbes | None = None
        if ebpf.node_callbacks:
            self.node = NodeProbes(
                self.receiver.attach_uprobes,
                self.receiver.detach_uprobes,
                self.receiver.register_node,
                selected,
            )
        # Each runtime's probes look at a process new to them once (its `checked`).
        self._runtime_probes: list[tuple[set[int], Callable[[int], object]]] = [
            (probes.checked, probes.check)
            for probes in (self.tls, self.goroutines, self.asyncio, self.node)
            if probes is not None
        ]
        # Pids every one of them has looked at: one set lookup per event, not four.
        # Emptied where a receiver may forget one (its sweep, an exec), to ask again.
        self._runtimes_checked: set[int] = set()
        self.metrics: CollectorMetrics | None = None
        self.recorder: MetricsRecorder | None = None
        self.tcp_health: TcpHealth | None = None
        self._tcp_scan_interval = scan_interval_s(dict(os.environ))
        if "metrics" in config.service.pipelines:
            self.metrics = CollectorMetrics(_metric_readers(config), self.telemetry)
            routes = RouteTemplates(ebpf.routes.id_patterns, ebpf.routes.max_per_service)
            self.recorder = MetricsRecorder(self.metrics, routes, self._peer_name)
            self.tcp_health = TcpHealth(
                self.metrics, lambda pid: self._processes.get(pid).service_name, include=scope
            )
        self.profiling: ProfilingService | None = None
        if profiling is not None:
            ties = SpanTies() if tie_in else None
            if ties is not None:
                self.tracker.correlator.tie_span = ties.add
            self.profiling = _profiling_service(
                config, self._processes, selector, self.telemetry, ties
            )
        health = config.health
        self._health_server = HealthServer(health.endpoint, self.health) if health else None
        limiter = config.memory_limiter
        self.memory = MemoryLimiter.from_config(limiter) if limiter is not None else None
        self._memory_said = float("-inf")  # when refusals over the soft limit were last said
        if self.memory is not None:
            self.telemetry.memory_soft_limit_mib = self.memory.soft_limit // MIB
            self.telemetry.memory_limit_mib = self.memory.limit // MIB
            log.info(
                "memory limiter: apps' OTLP requests answered 'retry later' above %d MiB "
                "resident (limit %d MiB: %s); %d MiB now",
                self.memory.soft_limit // MIB,
                self.memory.limit // MIB,
                self.memory.basis,
                self.memory.resident // MIB,
            )
        otlp = config.otlp
        self.otlp: OtlpReceiver | None = None
        if otlp is not None:
            p = otlp.protocols
            self.otlp = OtlpReceiver(
                self._on_otlp_spans,
                p.grpc.endpoint if p.grpc else None,
                p.http.endpoint if p.http else None,
                max_http_body=p.http.max_request_body_size if p.http else DEFAULT_MAX_BODY,
                max_grpc_message=(
                    p.grpc.max_recv_msg_size_mib << 20 if p.grpc else DEFAULT_MAX_GRPC_MESSAGE
                ),
                admission=self.memory.refusal if self.memory is not None else None,
            )

    def _on_kernel_event(self, event: Any) -> None:
        """The receiver's sink (the tracker needs the receiver first, for its quiet map).
        No exception goes back into the ring buffer's callback: counted, said at debug."""
        kind = type(event)
        try:
            if kind is DataEvent:  # most events: no other kind looked up
                self._check_runtimes(event.pid)
                self.tracker.handle(event)
                return
            if kind is ConnOpen:
                self._check_runtimes(event.pid)
            elif kind is ResetSent:
                self._on_reset(event)
                return
            elif kind is SocketBufferSet:
                self._on_buffer_set(event)
                return
            elif kind is OutlierExchange:
                self._on_outlier(event)
                return
            elif kind is ProcessExec:  # a new program: its name, runtime and libraries
                self._processes.forget(event.pid)
                self.tracker.correlator.forget_process(event.pid)
                self.tls.checked.discard(event.pid)
                self._runtimes_checked.discard(event.pid)
                if self.goroutines is not None:
                    self.goroutines.exec(event.pid)
                if self.asyncio is not None:
                    self.asyncio.exec(event.pid)
                if self.node is not None:
                    self.node.exec(event.pid)
                return
            self.tracker.handle(event)  # guards its own parsers and span building
            if kind is ConnClose:
                self._closed(event)
        except Exception as exc:
            self.telemetry.parse_errors += 1
            log.debug("%s not handled: %s", kind.__name__, fault_summary(exc))

    def _check_runtimes(self, pid: int) -> None:
        """A process new to us may map a libssl or an _asyncio not probed, or run a
        Go program or a Node not probed."""
        if pid in self._runtimes_checked:
            return
        looked_at = True
        for checked, check in self._runtime_probes:
            if pid not in checked:
                check(pid)
                looked_at = looked_at and pid in checked  # else asked again next event
        if looked_at:
            self._runtimes_checked.add(pid)

    def _in_scope(self, pid: int) -> bool:
        return self._scope is None or self._scope(pid)

    def _closed(self, ev: ConnClose) -> None:
        if self.tcp_health is not None:
            self.tcp_health.closed(ev)
        if not (ev.connect_failed and ev.remote is not None and self.live.watched()):
            return
        if not self._in_scope(ev.pid):
            return
        server = (self._peer_name(ev.local, ev.remote) if ev.local else None) or ev.remote.address
        client = self._processes.get(ev.pid).service_name
        if client.startswith("unknown_service:"):  # gone before its close was read
            client = "unknown_service"  # (curl refused): one row, not one per pid
        self.live.connect_failed(client, server)

    def _on_outlier(self, x: OutlierExchange) -> None:
        """A request the budget shed that failed or was slow: a span from the kernel's
        notes (its RED is counted already, so it feeds no metric)."""
        process = self._processes.get(x.pid, x.comm)  # first: a client may have exited
        if not self.tracker.traced(x.pid, x.port):
            return
        span = self._spans.outlier(x, process.resource)
        self.telemetry.spans_built += 1
        self.telemetry.spans_outliers += 1
        self.live.span(span, process.service_name, None, weight=0)
        if self.merger is None:
            self._export(span)
        else:
            self.merger.ebpf(span, None, x.pid)

    def _live(
        self, span: BuiltSpan, local: Endpoint | None, remote: Endpoint | None, weight: int
    ) -> None:
        """`otel-ebpf top`'s view: a client span's edge names its server as the
        service graph does."""
        if not self.live.watched():
            return
        resource = span.resource.attributes if span.resource else {}
        peer = None
        if span.kind != SpanKind.SERVER and remote is not None:
            peer = (self._peer_name(local, remote) if local else None) or remote.address
        self.live.span(span, str(resource.get("service.name", "unknown")), peer, weight)

    def _peer_name(self, local: Endpoint, remote: Endpoint) -> str | None:
        """The service at the other end: a process on this node, else a pod or
        Service the Kubernetes API knows by that address."""
        name = self.tracker.service_at(local, remote)
        if name is None and self._kube is not None:
            name = self._kube.name_of_address(remote.address)
        return name

    def _unseen_tls(self, pid: int, sent: bool) -> None:
        if self.tls.not_visible(pid, self._processes.get(pid).executable_name, sent):
            self.telemetry.tls_not_visible += 1

    def _on_buffer_set(self, ev: SocketBufferSet) -> None:
        process = self._processes.get(ev.pid, ev.comm)
        if self.misconfigurations.buffer_set(ev, process.executable_name) and self.metrics:
            self.metrics.misconfigurations.add(
                1,
                (
                    ("service.name", process.service_name),
                    ("otel_ebpf.tcp.misconfiguration", f"{ev.option} set after the handshake"),
                ),
            )

    def _on_reset(self, ev: ResetSent) -> None:
        closed = self.tracker.recently_closed(ev.sk)
        if self.tcp_health is None or closed is None:
            return
        role, local, remote = closed
        if remote is not None:
            self.tcp_health.reset_sent(ev.pid, role, local, remote)

    def _on_exchange(self, exchange: Exchange, conn: Connection) -> None:
        span = self._spans.build(exchange, conn)
        if span is None:
            return
        self.telemetry.spans_built += 1
        token = exchange.token  # once: an exchange of any protocol is read by name
        rc = token if isinstance(token, RequestContext) else None
        weight = 1
        if self.recorder is not None:
            weight = adjusted_count(rc.threshold) if rc is not None and rc.threshold else 1
            red_in_kernel = rc is not None and rc.red_in_kernel
            self.recorder.span(span, conn.local, conn.remote, red_in_kernel, weight)
        self._live(span, conn.local, conn.remote, weight)
        if self.merger is None:
            self._export(span)
            return
        self.merger.ebpf(span, rc, conn.pid)

    def _on_otlp_spans(self, spans: list[ReadableSpan], peer: OtlpSender | None) -> None:
        """Spans from apps' SDKs (receiver threads): queued for the processing thread,
        or refused with Busy (the sender retries) while too many wait already."""
        with self._otlp_waiting_lock:
            if self._otlp_waiting >= OTLP_WAITING_LIMIT:
                raise Busy(f"{self._otlp_waiting} spans wait to be processed: retry later")
            self._otlp_waiting += len(spans)
        self._otlp_batches.put((spans, peer))

    def _watch_memory(self) -> None:
        """Once a second: the resident size into self-telemetry (the limiter's
        read, made even with no request to make it)."""
        if self.memory is None:
            resident = resident_bytes()
        else:
            self.memory.refusal()
            resident = self.memory.resident
        self.telemetry.memory_resident_mib = resident // MIB

    def _count_otlp_refusals(self) -> None:
        """The receiver's refusals into self-telemetry; each cause said once a
        minute while it grows."""
        assert self.otlp is not None
        t, now = self.telemetry, time.monotonic()
        busy, over_memory = self.otlp.requests_busy, self.otlp.requests_over_memory
        if busy - over_memory > t.otlp_requests_busy - t.otlp_requests_over_memory and (
            now >= self._otlp_busy_logged + 60
        ):
            self._otlp_busy_logged = now
            log.warning(
                "OTLP receiver: apps send spans faster than the pipeline takes them; %d "
                "requests in all answered 'retry later' (their SDKs send them again)",
                busy - over_memory,
            )
        if over_memory > t.otlp_requests_over_memory and now >= self._memory_said + 60:
            self._memory_said = now
            assert self.memory is not None
            log.warning(
                "memory limiter: %d OTLP requests in all answered 'retry later' while the "
                "collector's memory was above its soft limit of %d MiB (limit %d MiB; %d MiB now)",
                over_memory,
                self.memory.soft_limit // MIB,
                self.memory.limit // MIB,
                self.memory.resident // MIB,
            )
        t.otlp_requests_busy, t.otlp_requests_over_memory = busy, over_memory
        t.otlp_requests_refused = self.otlp.requests_rejected

    def _drain_otlp(self) -> None:
        while True:
            try:
                spans, peer = self._otlp_batches.get_nowait()
            except queue.Empty:
                return
            with self._otlp_waiting_lock:
                self._otlp_waiting -= len(spans)
            self.telemetry.spans_received_otlp += len(spans)
            if self.merger is None:
                for span in spans:
                    self._export(span)
            else:
                pid = self.tracker.pid_of_peer(peer) if peer is not None else None
                if pid is None and time.monotonic() >= self._unknown_sdk_logged + 60:
                    self._unknown_sdk_logged = time.monotonic()
                    log.info(
                        "OTLP spans from %s, a process not known yet: not merged",
                        peer.client if peer is not None else "an unknown socket",
                    )
                self.merger.sdk(spans, pid)

    def _export(self, span: FinishedSpan) -> None:
        for batcher, room in self._outlets:
            if room():
                batcher.add(span)
            else:  # full after a wait: counted here, not handed over
                self.telemetry.spans_dropped += 1

    def stop(self) -> None:
        self._stop.set()

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start every part, then read and export until stopped. `on_ready` is
        called once all has started, just before the health check says ready."""
        if self._health_server is not None:
            self._health_server.start()
        try:
            if self._kube is not None:
                self._kube.start()
            if self._ebpf_enabled:
                self.receiver.start()
                self.budget.start(self.config.ebpf.span_budget.keep_slower_than)
                self.tls.start()
                self.telemetry.tls_libraries = len(self.tls.libraries)
                if self.goroutines is not None:
                    self.goroutines.start()
            if self.profiling is not None:  # after the socket program: it reads its map
                self._start_profiling()
            if self._health_server is not None:
                self._own_listener(self._health_server.port)
            if self.otlp is not None:
                try:
                    self.otlp.start()
                except OSError as exc:  # a port in use must not stop the eBPF side
                    log.error("OTLP receiver not started: %s", exc)
                    self.otlp.stop()
                    self.otlp = None
                else:
                    for port in (self.otlp.grpc_port, self.otlp.http_port):
                        if port:
                            self._own_listener(port)
            self.tracker.mark_own_connections()
            if on_ready is not None:
                on_ready()
            self.health.ready, self.health.status = True, "ready"
            metrics = self.config.service.pipelines.get("metrics")
            profiles = self.config.service.pipelines.get("profiles")
            to_profiles = ", ".join(profiles.exporters) if profiles and self.profiling else ""
            since_start = _seconds_since_start()
            if self._ebpf_enabled:
                log.info(
                    "collector ready %.1f s after start: tracing HTTP/1.x, HTTP/2 and gRPC, "
                    "Redis, PostgreSQL, MySQL and DNS; spans to %s; metrics to %s; "
                    "CPU profiles to %s; event path %s",
                    since_start,
                    ", ".join(self.config.traces.exporters) or "nowhere",
                    ", ".join(metrics.exporters) if metrics and metrics.exporters else "nowhere",
                    to_profiles or "nowhere",
                    native.status(),
                )
            else:
                log.info(
                    "collector ready %.1f s after start: CPU profiles to %s",
                    since_start,
                    to_profiles or "nowhere",
                )
            settle_heap()
            self._loop()
        finally:
            self._shutdown()

    def _loop(self) -> None:
        next_progress = time.monotonic() + PROGRESS_INTERVAL_S
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        next_lost_check = time.monotonic() + FIRST_BUDGET_LOOK_S
        if self._ebpf_enabled:  # weighed from here: start-up's own CPU is not the traffic's
            self.budget.restart_clock()
        next_tcp_scan = time.monotonic() + self._tcp_scan_interval
        wait_s = DRAIN_INTERVAL_S if self._ebpf_enabled else 0.1
        last_poll = time.monotonic()
        next_clock_warning = 0.0
        self._spans.watch_clock_steps()
        while not self._stop.is_set():
            more = False
            # before the drain: its spans' times take what the wall clock read since
            step = self._spans.follow_wall_clock()
            if step and time.monotonic() >= next_clock_warning:
                log.warning(
                    "the wall clock stepped %+.1f ms against the monotonic clock: span"
                    " times follow it (further steps within a minute are not logged)",
                    step / 1e6,
                )
                next_clock_warning = time.monotonic() + CLOCK_WARNING_INTERVAL_S
            if self._ebpf_enabled:
                more = self.receiver.poll()
                if not more:  # calls held for an earlier one go on once all is read
                    self.tracker.release_held()
            self._drain_otlp()
            received, now = self.receiver.events_received, time.monotonic()
            if self._ebpf_enabled:  # the telemetry holds the count before this drain
                read = received - self.telemetry.events_received
                wait_s = next_drain_wait(wait_s, read, now - last_poll)
                last_poll = now
            self.telemetry.events_received = received
            if now >= next_lost_check:
                if self._ebpf_enabled:
                    self._check_lost()
                    self.budget.tick()
                self.tracker.expire(time.monotonic_ns())
                if self.goroutines is not None:
                    self.telemetry.go_processes = self.goroutines.processes
                if self.asyncio is not None:
                    self.telemetry.asyncio_processes = self.asyncio.processes
                if self.node is not None:
                    self.telemetry.node_processes = self.node.processes
                if self.metrics is not None:
                    self.metrics.tracked_connections = len(self.tracker)
                self.telemetry.spans_queued = sum(len(b.queue) for b in self._batchers)
                self._watch_memory()
                if self.otlp is not None:
                    self._count_otlp_refusals()
                self.telemetry.export_waited_ms = int(sum(r.waited_s for r in self._rooms) * 1000)
                self._processes.refresh_pending()
                name_threads()  # those started since: exporters', receivers' workers
                if self.merger is not None:
                    self.merger.expire(now)
                    self.telemetry.spans_merged_away = self.merger.duplicates_dropped
                next_lost_check = now + 1.0
            if now >= next_tcp_scan:
                if self.tcp_health is not None:
                    self._guarded("reading TCP health", self._scan_tcp_health)
                self._guarded("scanning listen backlogs", self._scan_backlogs)
                self._guarded("reading the kernel's request counts", self._count_kernel_red)
                next_tcp_scan = now + self._tcp_scan_interval
            if now >= next_sweep:
                if self._ebpf_enabled:
                    self.tls.scan_all()
                    self.telemetry.tls_libraries = len(self.tls.libraries)
                    if self.goroutines is not None:
                        self.goroutines.sweep()
                    if self.asyncio is not None:
                        self.asyncio.sweep()
                    if self.node is not None:
                        self.node.sweep()
                    self._runtimes_checked.clear()  # the sweeps forgot some: ask again
                for pid in self._processes.forget_exited():
                    self.tracker.correlator.forget_process(pid)
                self.tracker.correlator.expire(time.monotonic_ns())
                trim_heap()
                next_sweep = now + SWEEP_INTERVAL_S
            if now >= next_progress:
                log.info("progress: %s", self.telemetry.snapshot())
                next_progress = now + PROGRESS_INTERVAL_S
            if not more:
                self._stop.wait(wait_s)

    def _scan_tcp_health(self) -> None:
        assert self.tcp_health is not None
        self.tcp_health.scan(
            self.receiver.live_connections(), self.tracker.ends, time.monotonic_ns()
        )

    def _guarded(self, what: str, work: Callable[[], None]) -> None:
        """Periodic work: a fault is logged (with its traceback the first time for
        each step and kind of fault) and the collector goes on."""
        try:
            work()
        except Exception as exc:
            fault = (what, type(exc).__name__)
            first = fault not in self._faults_said
            self._faults_said.add(fault)
            log.error("%s failed: %s", what, fault_summary(exc), exc_info=first)

    def _start_profiling(self) -> None:
        """A profiler that cannot start (no perf events here) costs profiling only,
        unless profiles are all this collector was asked for."""
        assert self.profiling is not None
        try:
            self.profiling.start()
        except ReceiverError as exc:
            if not self._ebpf_enabled and self.otlp is None:
                raise
            log.error("CPU profiling not started: %s", exc)
            self.profiling = None

    def _own_listener(self, port: int) -> None:
        self.tracker.add_own_listener(port)
        self.receiver.own_port(port)

    def _count_kernel_red(self) -> None:
        """Requests and database commands counted in the kernel since the last scan (those
        of processes and ports not selected for tracing left out, as their spans are).
        Without a metrics pipeline they are read and let go (the budget counts too)."""
        counts = self.receiver.take_red_counts()
        if self.recorder is None:
            return
        for counted in counts:  # each on its own: a fault loses that one alone
            self._guarded("counting a kernel count", partial(self._record_kernel_red, counted))
        dropped = self.receiver.red_dropped()
        if dropped > self.telemetry.requests_not_counted:
            log.warning(
                "%d requests not counted in the kernel (its series map is full: too many "
                "distinct paths or statements between two reads)",
                dropped - self.telemetry.requests_not_counted,
            )
            self.telemetry.requests_not_counted = dropped
        names = self.receiver.pg_names
        if names is not None and names.unnamed > self.telemetry.statements_unnamed:
            log.warning(
                "%d PostgreSQL statements counted without their operation's name (the kernel "
                "no longer kept their text: over 4,096 distinct statements between two reads)",
                names.unnamed - self.telemetry.statements_unnamed,
            )
            self.telemetry.statements_unnamed = names.unnamed

    def _record_kernel_red(self, counted: RedCount) -> None:
        # first, with its name: a client may have exited, all its requests shed
        service = self._processes.get(counted.pid, counted.comm).service_name
        if not self.tracker.traced(counted.pid, counted.port):
            return
        assert self.recorder is not None
        if counted.role == Role.SERVER:
            self.recorder.kernel_http_server(counted, service)
            return
        peer = self.tracker.service_serving(Endpoint(counted.peer, counted.port))
        if counted.protocol != "http":
            self.recorder.kernel_db_client(counted, service, peer)
        else:
            self.recorder.kernel_http_client(counted, service, peer)

    def _scan_backlogs(self) -> None:
        for found in self.backlogs.scan(self._processes.known()):
            if self.metrics is not None:
                attributes: dict[str, str | int] = {"otel_ebpf.netns": found.netns}
                if len(found.services) == 1:
                    attributes["service.name"] = found.services[0]
                self.metrics.listen_overflows.add(found.dropped, tuple(attributes.items()))

    def _check_lost(self) -> None:
        """Say so, once a second at most, when the kernel had to drop events."""
        lost = self.receiver.events_lost()
        if lost > self.telemetry.events_lost:
            log.warning(
                "kernel dropped %d events (ring buffer full; %d in all): spans for those "
                "requests are lost; raise receivers.ebpf.ring_buffer_pages or narrow the "
                "selection (OTEL_EBPF_OPEN_PORT, OTEL_EBPF_AUTO_TARGET_EXE)",
                lost - self.telemetry.events_lost,
                lost,
            )
        self.telemetry.events_lost = lost
        self.telemetry.events_retried = self.receiver.events_retried()

    def _shutdown(self) -> None:
        self.health.ready, self.health.status = False, "stopping"
        self.stopping_at = "reading the last events"
        if self.profiling is not None:
            self.profiling.stop_sampling()
        self.receiver.drain()
        self.telemetry.events_received = self.receiver.events_received
        self.telemetry.events_lost = self.receiver.events_lost()
        if self._ebpf_enabled:
            self.budget.count_shed()
        self.stopping_at = "ending the open exchanges"
        self.tracker.release_held()
        self.tracker.close_all(time.monotonic_ns())
        for _ in range(2):  # both of the kernel's count maps
            self._count_kernel_red()
        # Detaching takes the kernel about 2 s: done while the last export goes out.
        detach = threading.Thread(target=self.receiver.close, name="detach", daemon=True)
        detach.start()
        self.stopping_at = "stopping the OTLP receiver and the Kubernetes watch"
        if self.otlp is not None:
            self.otlp.stop()
        if self._kube is not None:
            self._kube.stop()
        self.stopping_at = "the final export"
        self._drain_otlp()
        if self.merger is not None:
            self.merger.expire(everything=True)  # held spans leave as they are
        self._flush()
        # Never exit while bcc is detaching (the process would abort in libbcc);
        # it ends with the kernel's work, about 2 s here, whatever the backends do.
        self.stopping_at = "detaching the kernel programs"
        detach.join()
        self.stopping_at = "the last CPU profile"
        if self.profiling is not None:  # its last window went out beside the spans
            self.profiling.finish(FLUSH_TIMEOUT_S)
        self.stopping_at = "stopping the health endpoint"
        if self.otlp is not None:
            self._count_otlp_refusals()
        if self._health_server is not None:
            self._health_server.stop()
        log.info("stopped: %s", self.telemetry.snapshot())
        self.stopping_at = "the interpreter's exit (threads ending, bcc freeing its modules)"

    def _flush(self) -> None:
        """The last export of queued spans and measured metrics, all exporters at
        once, within FLUSH_TIMEOUT_S: a dead backend must not hold the exit past a
        pod's grace period. What could not be sent is counted as dropped and said."""
        steps: list[Any] = [partial(b.shutdown, FLUSH_TIMEOUT_S) for b in self._batchers]
        if self.metrics is not None:
            steps.append(partial(self.metrics.shutdown, FLUSH_TIMEOUT_S))
        threads = [threading.Thread(target=step, name="flush", daemon=True) for step in steps]
        deadline = time.monotonic() + FLUSH_TIMEOUT_S + 0.5
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        # Queues first, then the batches under way: a batch taken from a queue in
        # between is under way by then, or refused by its abandoned exporter.
        unsent = sum(len(b.queue) for b in self._batchers)
        unsent += sum(e.abandon() for e in self._exporters)
        if unsent or any(t.is_alive() for t in threads):
            self.telemetry.spans_dropped += unsent
            log.warning(
                "stopping: %d spans (and any metrics not yet sent) dropped: the exporters did "
                "not deliver them within %.0f s (is the backend reachable?)",
                unsent,
                FLUSH_TIMEOUT_S,
            )
