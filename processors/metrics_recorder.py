"""Spans -> measurements: RED histograms and the service graph.

Works from finished spans, so every protocol's RED metric uses the same
attributes its spans carry. Attribute sets are the conventions' low-cardinality
ones; routes go through `RouteTemplates`. (TCP health: processors.tcp_health.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from otel_ebpf.aggregation import Series
from otel_ebpf.metrics import (
    DB_BUCKETS,
    HTTP_BUCKETS,
    KERNEL_BUCKETS,
    CollectorMetrics,
    rebin,
)
from otel_ebpf.model import Endpoint, FinishedSpan, RedCount
from otel_ebpf.processors.protocols.http1 import known_method
from otel_ebpf.processors.redaction import UrlRedactor, host_of, host_port
from otel_ebpf.processors.routes import RouteTemplates
from otel_ebpf.processors.spans import db_attributes

_HTTP_SERVER_KEYS: Final = (
    "http.request.method",
    "http.response.status_code",
    "url.scheme",
    "network.protocol.version",
    "error.type",
)
_HTTP_CLIENT_KEYS: Final = (
    "http.request.method",
    "http.response.status_code",
    "server.address",
    "server.port",
    "network.protocol.version",
    "error.type",
)
_DB_KEYS: Final = (
    "db.system.name",
    "db.namespace",
    "db.operation.name",
    "db.collection.name",
    "db.response.status_code",
    "server.address",
    "server.port",
    "error.type",
)
_RPC_KEYS: Final = ("rpc.system.name", "rpc.method", "rpc.response.status_code", "error.type")
_DNS_KEYS: Final = ("dns.question.name", "error.type")

_URLS: Final = UrlRedactor()  # the path of a target, as spans take it
_SERVER: Final = SpanKind.SERVER  # read once: an enum member is a class attribute lookup
_ERROR: Final = StatusCode.ERROR
_SplitParts = tuple[tuple[Series, str], ...]  # (series, the span attribute that measured it)
# (edge, verdict) pairs whose series are kept; all forgotten when full
MAX_EDGE_SERIES: Final = 4096

# The service at the other end of a connection (this end, other end), when it
# is a process on this node.
PeerService = Callable[[Endpoint, Endpoint], str | None]
MAX_RESOURCES: Final = 4096  # service names kept by resource; all forgotten when full


def _counts(
    counted: RedCount, buckets: tuple[int, ...] | None = None
) -> tuple[int, float, float, float, tuple[int, ...]]:
    """`counted` as record_counted takes it; `buckets` in place of its own."""
    return (
        counted.requests,
        counted.sum_ns / 1e9,
        counted.min_ns / 1e9,
        counted.max_ns / 1e9,
        counted.buckets if buckets is None else buckets,
    )


def _pick(attrs: Mapping[str, object], keys: tuple[str, ...], service: str) -> Series:
    out: list[tuple[str, str | int | bool]] = [("service.name", service)]
    for k in keys:
        v = attrs.get(k)
        if isinstance(v, str | int | bool):
            out.append((k, v))
    return tuple(out)


class MetricsRecorder:
    def __init__(
        self,
        metrics: CollectorMetrics,
        routes: RouteTemplates,
        peer_service: PeerService,
    ) -> None:
        self._m = metrics
        self._routes = routes
        self._peer_service = peer_service
        # service.name per resource object (reading it is three interpreted calls);
        # the resource is kept beside its name, so its id cannot be reused meanwhile.
        self._services: dict[int, tuple[Resource, str]] = {}
        # an edge's series for a verdict, and for each part of the split with the
        # span attribute that measured it: made once, not per measurement
        self._edge_series: dict[tuple[Series, str], tuple[Series, _SplitParts]] = {}

    # -- spans: RED and the service graph ----------------------------------------

    def span(
        self,
        span: FinishedSpan,
        local: Endpoint | None,
        remote: Endpoint | None,
        red_in_kernel: bool = False,
        weight: int = 1,
    ) -> None:
        """One eBPF span; `local`/`remote` are its connection's ends (None for DNS).
        `red_in_kernel`: the kernel counts its request (kernel_http_server and the like).
        `weight`: the requests it stands for (the span budget kept 1 in `weight`),
        for what only spans measure: the graph's server side and verdicts."""
        attrs = span.attributes or {}  # read in place: no copy per span
        service = self._service(span.resource)
        seconds = max((span.end_time or 0) - (span.start_time or 0), 0) / 1e9
        server = span.kind == _SERVER
        m = self._m
        route = edge = None
        rpc = "rpc.system.name" in attrs
        http = not rpc and "http.request.method" in attrs  # an RPC's path is no route
        dns = "dns.question.name" in attrs
        if http and server and not red_in_kernel:
            route = self._routes.route(service, str(attrs.get("url.path", "/")))
        if remote is not None and not dns:
            edge = self._edge(local, remote, service, server)
        with m.lock:  # once for all of this span's measurements
            if rpc:
                (m.rpc_server if server else m.rpc_client).record_held(
                    seconds, _pick(attrs, _RPC_KEYS, service)
                )
            elif http:
                if route is not None:
                    m.http_server.record_held(
                        seconds, (*_pick(attrs, _HTTP_SERVER_KEYS, service), ("http.route", route))
                    )
                elif not server and not red_in_kernel:
                    m.http_client.record_held(seconds, _pick(attrs, _HTTP_CLIENT_KEYS, service))
            elif "db.system.name" in attrs:
                if not red_in_kernel:
                    m.db_client.record_held(seconds, _pick(attrs, _DB_KEYS, service))
            elif dns:
                m.dns_lookup.record_held(seconds, _pick(attrs, _DNS_KEYS, service))
            if edge is not None:
                self._graph(span, edge, seconds, server, red_in_kernel, weight)

    def _service(self, resource: Resource | None) -> str:
        if resource is None:
            return "unknown"
        known = self._services.get(id(resource))
        if known is not None and known[0] is resource:
            return known[1]
        if len(self._services) >= MAX_RESOURCES:
            self._services.clear()
        name = str(resource.attributes.get("service.name", "unknown"))
        self._services[id(resource)] = (resource, name)
        return name

    def kernel_http_server(self, counted: RedCount, service: str) -> None:
        """HTTP/1 server requests the kernel counted: the attributes a span's
        measurement has (the same series), the route from the path here."""
        attrs = self._kernel_http_head(counted, service)
        attrs.append(("url.scheme", "https" if counted.tls else "http"))
        if counted.version:
            attrs.append(("network.protocol.version", counted.version))
        if not counted.status:
            attrs.append(("error.type", "no_response"))
        elif counted.status >= 500:
            attrs.append(("error.type", str(counted.status)))
        path = _URLS.split(counted.path or "/")[0]  # an absolute-form target's userinfo goes
        attrs.append(("http.route", self._routes.route(service, path)))
        self._m.http_server.record_counted(tuple(attrs), *_counts(counted))

    def kernel_http_client(self, counted: RedCount, service: str, peer: str | None) -> None:
        """HTTP/1 client requests the kernel counted, as their spans would be: the
        server named by the Host header (else the peer); `peer` the service at the
        other end when it runs on this node. The service graph counts them too."""
        attrs = self._kernel_http_head(counted, service)
        address, port = host_port(host_of(counted.host)) if counted.host else ("", None)
        attrs.append(("server.address", address or counted.peer))
        attrs.append(("server.port", port if port is not None else counted.port))
        if counted.version:
            attrs.append(("network.protocol.version", counted.version))
        failed = not counted.status or counted.status >= 400
        if failed:
            attrs.append(("error.type", str(counted.status) if counted.status else "no_response"))
        counts = _counts(counted)
        self._m.http_client.record_counted(tuple(attrs), *counts)
        self._kernel_edge(counted, service, peer, failed, counts)

    def kernel_db_client(self, counted: RedCount, service: str, peer: str | None) -> None:
        """Redis commands and PostgreSQL statements the kernel counted, in the series
        their spans would join."""
        attrs = db_attributes(counted)
        # over KERNEL_BUCKETS: summed into the database histogram's and the graph's
        db = _counts(counted, rebin(counted.buckets, KERNEL_BUCKETS, DB_BUCKETS))
        self._m.db_client.record_counted(_pick(attrs, _DB_KEYS, service), *db)
        graph = _counts(counted, rebin(counted.buckets, KERNEL_BUCKETS, HTTP_BUCKETS))
        self._kernel_edge(counted, service, peer, "error.type" in attrs, graph)

    def _kernel_edge(
        self,
        counted: RedCount,
        service: str,
        peer: str | None,
        failed: bool,
        counts: tuple[int, float, float, float, tuple[int, ...]],
    ) -> None:
        """The service graph's client side of requests the kernel counted."""
        edge: Series = (("client", service), ("server", peer or counted.peer))
        self._m.graph_requests.add(counted.requests, edge)
        if failed:
            self._m.graph_failed.add(counted.requests, edge)
        self._m.graph_client.record_counted(edge, *counts)

    @staticmethod
    def _kernel_http_head(counted: RedCount, service: str) -> list[tuple[str, str | int | bool]]:
        attrs: list[tuple[str, str | int | bool]] = [
            ("service.name", service),
            ("http.request.method", known_method(counted.method)),
        ]
        if counted.status:
            attrs.append(("http.response.status_code", counted.status))
        return attrs

    def _edge(self, local: Endpoint | None, remote: Endpoint, service: str, server: bool) -> Series:
        """Edges name both services: the peer process's when it is on this node,
        else the peer's address (never a raw IP for a known process)."""
        other = (self._peer_service(local, remote) if local else None) or remote.address
        client, server_name = (other, service) if server else (service, other)
        return (("client", client), ("server", server_name))

    def _graph(
        self,
        span: FinishedSpan,
        edge: Series,
        seconds: float,
        server: bool,
        red_in_kernel: bool,
        weight: int = 1,
    ) -> None:
        """The span's measurements on its edge, the instruments' lock held. A
        request the kernel counted is counted on its edge by kernel_http_client."""
        attrs = span.attributes or {}
        m = self._m
        if server:
            m.graph_server.record_held(seconds, edge, weight)
            return
        # The client's view counts the request (it sees failures the server never does).
        if not red_in_kernel:
            m.graph_requests.add_held(1, edge)
            if span.status.status_code == _ERROR:
                m.graph_failed.add_held(1, edge)
            m.graph_client.record_held(seconds, edge)
        verdict = attrs.get("otel_ebpf.verdict")
        if verdict is None:
            return
        verdict_series, parts = self._split_series(edge, str(verdict))
        for series, key in parts:
            value = attrs.get(key)
            if isinstance(value, float):
                m.graph_split.record_held(value, series, weight)
        m.graph_verdicts.add_held(weight, verdict_series)

    def _split_series(self, edge: Series, verdict: str) -> tuple[Series, _SplitParts]:
        """The edge's series for a verdict, and for the split's server and network
        parts, each with the span attribute that measured it."""
        made = self._edge_series.get((edge, verdict))
        if made is None:
            if len(self._edge_series) >= MAX_EDGE_SERIES:
                self._edge_series.clear()
            parts = tuple(
                ((*edge, ("otel_ebpf.time.part", part)), f"otel_ebpf.time.{part}")
                for part in ("server", "network")
            )
            made = self._edge_series[(edge, verdict)] = (
                (*edge, ("otel_ebpf.verdict", verdict)),
                parts,
            )
        return made
