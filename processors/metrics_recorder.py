"""Spans and connection events -> measurements (RED, TCP health, service graph).

Works from finished spans, so every protocol's RED metric uses the same
attributes its spans carry, and from the kernel's connection events for TCP
health. Attribute sets are the conventions' low-cardinality ones; routes go
through `RouteTemplates`, peers through a top-N cap with an overflow series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from otel_ebpf.metrics import Attributes, CollectorMetrics
from otel_ebpf.model import ConnClose, Endpoint, ResetSent, Role
from otel_ebpf.processors.routes import RouteTemplates

MAX_PEERS = 500  # distinct (service, peer) series for TCP health before "other"
OVERFLOW_PEER = "_other"

_HTTP_SERVER_KEYS = (
    "http.request.method",
    "http.response.status_code",
    "url.scheme",
    "network.protocol.version",
    "error.type",
)
_HTTP_CLIENT_KEYS = (
    "http.request.method",
    "http.response.status_code",
    "server.address",
    "server.port",
    "network.protocol.version",
    "error.type",
)
_DB_KEYS = (
    "db.system.name",
    "db.namespace",
    "db.operation.name",
    "db.collection.name",
    "db.response.status_code",
    "server.address",
    "server.port",
    "error.type",
)
_RPC_KEYS = ("rpc.system.name", "rpc.method", "rpc.response.status_code", "error.type")
_DNS_KEYS = ("dns.question.name", "error.type")

# The service at the other end of a connection (this end, other end), when it
# is a process on this node.
PeerService = Callable[[Endpoint, Endpoint], str | None]


def _pick(attrs: Mapping[str, object], keys: tuple[str, ...], service: str) -> Attributes:
    out: Attributes = {"service.name": service}
    for k in keys:
        v = attrs.get(k)
        if isinstance(v, str | int | bool):
            out[k] = v
    return out


class MetricsRecorder:
    def __init__(
        self,
        metrics: CollectorMetrics,
        routes: RouteTemplates,
        peer_service: PeerService,
        service_of_pid: Callable[[int], str],
    ) -> None:
        self._m = metrics
        self._routes = routes
        self._peer_service = peer_service
        self._service_of_pid = service_of_pid
        self._peers: set[tuple[str, str, int]] = set()

    # -- spans: RED and the service graph ----------------------------------------

    def span(self, span: ReadableSpan, local: Endpoint | None, remote: Endpoint | None) -> None:
        """One eBPF span; `local`/`remote` are its connection's ends (None for DNS)."""
        attrs = span.attributes or {}  # read in place: no copy per span
        resource = span.resource.attributes if span.resource else {}
        service = str(resource.get("service.name", "unknown"))
        seconds = max((span.end_time or 0) - (span.start_time or 0), 0) / 1e9
        server = span.kind == SpanKind.SERVER
        m = self._m
        if "rpc.system.name" in attrs:
            (m.rpc_server if server else m.rpc_client).record(
                seconds, _pick(attrs, _RPC_KEYS, service)
            )
        elif "http.request.method" in attrs:
            if server:
                a = _pick(attrs, _HTTP_SERVER_KEYS, service)
                a["http.route"] = self._routes.route(service, str(attrs.get("url.path", "/")))
                m.http_server.record(seconds, a)
            else:
                m.http_client.record(seconds, _pick(attrs, _HTTP_CLIENT_KEYS, service))
        elif "db.system.name" in attrs:
            m.db_client.record(seconds, _pick(attrs, _DB_KEYS, service))
        elif "dns.question.name" in attrs:
            m.dns_lookup.record(seconds, _pick(attrs, _DNS_KEYS, service))
        if remote is not None and "dns.question.name" not in attrs:
            self._graph(span, local, remote, service, seconds, server)

    def _graph(
        self,
        span: ReadableSpan,
        local: Endpoint | None,
        remote: Endpoint,
        service: str,
        seconds: float,
        server: bool,
    ) -> None:
        """Edges name both services: the peer process's when it is on this node,
        else the peer's address (never a raw IP for a known process)."""
        other = (self._peer_service(local, remote) if local else None) or remote.address
        client, server_name = (other, service) if server else (service, other)
        edge: Attributes = {"client": client, "server": server_name}
        failed = span.status.status_code == StatusCode.ERROR
        if server:
            self._m.graph_server.record(seconds, edge)
            return
        # The client's view counts the request (it sees failures the server never does).
        self._m.graph_requests.add(1, edge)
        if failed:
            self._m.graph_failed.add(1, edge)
        self._m.graph_client.record(seconds, edge)

    # -- connections: TCP health ---------------------------------------------------

    def closed(self, ev: ConnClose) -> None:
        if ev.remote is None or ev.role == Role.UNKNOWN:
            return
        service = self._service_of_pid(ev.pid) if ev.pid else "unknown"
        base = self._peer(service, ev.role, ev.local, ev.remote)
        m = self._m
        failure = ev.failure
        if failure is None:
            m.tcp_opened.add(1, base)
        if failure is not None:
            m.tcp_failed.add(1, {**base, "otel_ebpf.tcp.failure": failure})
        if ev.retransmits:
            m.tcp_retransmits.add(ev.retransmits, base)
        if ev.resets_in:
            m.tcp_resets.add(ev.resets_in, {**base, "network.io.direction": "receive"})
        if ev.resets_out:
            m.tcp_resets.add(ev.resets_out, {**base, "network.io.direction": "transmit"})
        if failure is None:
            m.tcp_bytes.add(ev.bytes_egress, {**base, "network.io.direction": "transmit"})
            m.tcp_bytes.add(ev.bytes_ingress, {**base, "network.io.direction": "receive"})
            if ev.opened:
                m.tcp_duration.record((ev.ts - ev.opened) / 1e9, base)
            if ev.srtt_us:
                m.tcp_rtt.record(ev.srtt_us / 1e6, base)

    def reset_sent(
        self, ev: ResetSent, role: Role, local: Endpoint | None, remote: Endpoint
    ) -> None:
        service = self._service_of_pid(ev.pid) if ev.pid else "unknown"
        base = self._peer(service, role, local, remote)
        self._m.tcp_resets.add(1, {**base, "network.io.direction": "transmit"})

    def _peer(
        self, service: str, role: Role, local: Endpoint | None, remote: Endpoint
    ) -> Attributes:
        """The series of a connection: its service, its peer's address, the server
        port (a client's ephemeral port would make a series per connection), and
        the direction; past MAX_PEERS distinct ones, an overflow series."""
        server_port = remote.port if role == Role.CLIENT else (local.port if local else 0)
        key = (service, remote.address, server_port)
        direction = _direction(role)
        if key not in self._peers and len(self._peers) >= MAX_PEERS:
            return {
                "service.name": service,
                "network.peer.address": OVERFLOW_PEER,
                "direction": direction,
            }
        self._peers.add(key)
        return {
            "service.name": service,
            "network.peer.address": remote.address,
            "server.port": server_port,
            "direction": direction,
        }


def _direction(role: Role) -> str:
    return "active" if role == Role.CLIENT else "passive"
