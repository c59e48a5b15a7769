"""HTTP exchanges -> OpenTelemetry spans, per the HTTP semantic conventions.

Semantic conventions version: otel_ebpf.SEMCONV_VERSION (stable HTTP names).
SERVER spans for requests a process received on an accepted socket, CLIENT
spans for requests it sent on a connected one; times are the first request
byte and the last response byte as the traced process saw them.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Protocol

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_ebpf import SCHEMA_URL, __version__
from otel_ebpf.model import (
    BuiltSpan,
    DnsExchange,
    Exchange,
    Http2Exchange,
    HttpExchange,
    HttpHead,
    OutlierExchange,
    RedCount,
    RedisExchange,
    Role,
    SpanIds,
    SqlExchange,
)
from otel_ebpf.processors.budget import RAND_BITS, sampling_state
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.correlate import RequestContext
from otel_ebpf.processors.phases import PeerSplit, Timing, split
from otel_ebpf.processors.protocols.http1 import known_method
from otel_ebpf.processors.protocols.http2 import GRPC_STATUS
from otel_ebpf.processors.protocols.sql import MAX_QUERY_TEXT, collection_of, operation_of, sanitize
from otel_ebpf.processors.redaction import UrlRedactor, host_of, host_port, scrub_message
from otel_ebpf.processors.wall_clock import WallClock

MAX_QUERY_ARGS: Final = 16
MAX_HOSTS: Final = 1024  # Host headers whose parts are kept; all forgotten when full
SCOPE: Final = InstrumentationScope("otel-ebpf", __version__, SCHEMA_URL)
# Statuses without a description, shared by every span that has one (a Status
# does not change once made; building one is an interpreted call per span).
_UNSET: Final = Status(StatusCode.UNSET)
_ERROR: Final = Status(StatusCode.ERROR)
_SERVER: Final = SpanKind.SERVER  # read once: an enum member is a class attribute lookup
_CLIENT: Final = SpanKind.CLIENT


def db_attributes(counted: RedCount | OutlierExchange) -> dict[str, str | int]:
    """A database command the kernel noted, as its span says it: Redis's name, a
    PostgreSQL statement's operation, table and database; the error's code."""
    attrs: dict[str, str | int] = {"db.system.name": counted.protocol}
    if counted.host:  # PostgreSQL: the database
        attrs["db.namespace"] = counted.host
    if counted.method:
        attrs["db.operation.name"] = counted.method
    if counted.path:  # PostgreSQL: the table
        attrs["db.collection.name"] = counted.path
    attrs["server.address"] = counted.peer
    attrs["server.port"] = counted.port
    if counted.error:
        attrs["db.response.status_code"] = attrs["error.type"] = counted.error
    elif not counted.status:
        attrs["error.type"] = "no_response"
    return attrs


class SpanBuilder:
    """Exchanges -> spans. Raw statement and error texts only when asked for;
    URLs always go through the redactor."""

    def __init__(
        self,
        epoch_offset: int | None = None,
        raw_db_query_text: bool = False,
        urls: UrlRedactor | None = None,
        misconfigured: Callable[[int, int], str | None] | None = None,
        nodelay: Callable[[int, int], bool | None] | None = None,
    ) -> None:
        self._clock = WallClock(epoch_offset)
        self._rand = random.Random()
        self._raw_db_query_text = raw_db_query_text
        self._urls = urls or UrlRedactor()
        self._misconfigured = misconfigured or (lambda _pid, _port: None)
        self._nodelay = nodelay or (lambda _pid, _fd: None)
        # Both ends on this node: a server's split by its client span's id, and
        # the time a server spent in its own calls, by its span's id.
        self._peers: OrderedDict[int, PeerSplit] = OrderedDict()
        self._downstream: OrderedDict[int, int] = OrderedDict()
        # Host headers seen -> (host, address, port): a connection sends the same one
        self._hosts: dict[str, tuple[str, str, int | None]] = {}

    def build(self, x: Exchange, conn: Connection) -> BuiltSpan | None:
        """The span for one exchange; None where none is due (a database server's side)."""
        if isinstance(x, HttpExchange):
            return self._http(x, conn)
        if isinstance(x, Http2Exchange):
            return self._grpc(x, conn) if x.grpc else self._http(_as_http(x), conn)
        if conn.role != Role.CLIENT:
            return None
        if isinstance(x, RedisExchange):
            return self._redis(x, conn)
        if isinstance(x, DnsExchange):
            return self._dns(x, conn)
        return self._sql(x, conn)

    def _grpc(self, x: Http2Exchange, conn: Connection) -> BuiltSpan:
        """RPC conventions as stabilised after semconv 1.37 (rpc.system.name,
        fully-qualified rpc.method, string rpc.response.status_code)."""
        server = conn.role == Role.SERVER
        method = x.path.lstrip("/")
        attrs: dict[str, str | int] = {
            "rpc.system.name": "grpc",
            "rpc.method": method or "_OTHER",
            "network.protocol.name": "http",
            "network.protocol.version": "2",
        }
        status = _UNSET
        if x.grpc_status is not None:
            code = x.grpc_status
            name = GRPC_STATUS[code] if 0 <= code < len(GRPC_STATUS) else str(code)
            attrs["rpc.response.status_code"] = name
            if code != 0 and (not server or name in _GRPC_SERVER_ERRORS):
                attrs["error.type"] = name
                status = Status(StatusCode.ERROR, self._error_text(x.grpc_message) or None)
        elif x.reset:  # RST_STREAM
            attrs["error.type"] = "reset"
            status = Status(StatusCode.ERROR, "stream reset without a gRPC status")
        else:  # no trailers: the connection ended first
            status = self._unanswered(attrs, conn, "a gRPC status")
        name = method or "grpc"
        return self._span(name, x, conn, attrs, status, _SERVER if server else _CLIENT)

    def _dns(self, x: DnsExchange, conn: Connection) -> BuiltSpan:
        """A lookup: dns.* registry attributes; rcode and type under otel_ebpf.dns.*."""
        q, r = x.query, x.response
        attrs: dict[str, str | int | list[str]] = {
            "dns.question.name": q.name,
            "otel_ebpf.dns.question.type": q.qtype,
            "network.transport": x.transport,
        }
        status = _UNSET
        if r is None:
            attrs["error.type"] = "timeout" if x.timed_out else "no_response"
            status = Status(StatusCode.ERROR, "no answer" + (" (timed out)" if x.timed_out else ""))
        else:
            attrs["otel_ebpf.dns.response_code"] = r.rcode
            if r.answers:
                attrs["dns.answers"] = list(r.answers)
            if r.rcode != "NOERROR":
                attrs["error.type"] = r.rcode
                status = Status(StatusCode.ERROR, r.rcode)
        return self._client_span(f"DNS {q.qtype}", x, conn, attrs, status)  # type: ignore[arg-type]

    def _network_facts(
        self,
        attrs: dict[str, Any],
        token: object,
        kind: SpanKind,
        x: Exchange,
        conn: Connection,
    ) -> None:
        """What TCP did during the request, and where its time went (phases.py)."""
        if conn.local is not None:
            wrong = self._misconfigured(conn.pid, conn.local.port)
            if wrong:
                attrs["otel_ebpf.tcp.misconfiguration"] = wrong
        if not isinstance(token, RequestContext):
            return
        net = token.net
        if net is None:
            return
        attrs["otel_ebpf.tcp.retransmits"] = net.retransmits
        attrs["otel_ebpf.tcp.bytes_sent"] = net.bytes_sent
        attrs["otel_ebpf.tcp.bytes_received"] = net.bytes_received
        attrs["otel_ebpf.tcp.connection.new"] = net.new_connection
        if net.srtt_us:
            attrs["otel_ebpf.tcp.rtt"] = net.srtt_us / 1e6
        if net.reset:
            attrs["otel_ebpf.tcp.reset"] = True
        if net.send_wait_ns:
            attrs["otel_ebpf.tcp.send_wait"] = net.send_wait_ns / 1e9
        if net.window_small:
            attrs["otel_ebpf.tcp.window_small"] = net.window_small
        server_side = kind is _SERVER
        request_end, response_start = _message_bounds(x)
        timing = Timing(
            server_side,
            x.start_ts,
            request_end,
            response_start,
            x.end_ts,
            net.bytes_received if server_side else net.bytes_sent,
            net.send_wait_ns,
            net.window_small,
            net.srtt_us * 1000,
            self._downstream.pop(token.span_id, 0) if server_side else 0,
        )
        peer = None if server_side or not token.resolved else self._peers.pop(token.span_id, None)
        result = split(timing, peer)
        if token.resolved and token.parent_id:
            if server_side:  # for its client's span, built next
                handling = PeerSplit(
                    result.server + result.downstream,
                    result.stall,
                    result.stall_ns,
                    net.window_small,
                )
                _remember(self._peers, token.parent_id, handling)
            else:  # time its server spent waiting on this call
                duration = max(x.end_ts - x.start_ts, 0)
                _remember(self._downstream, token.parent_id, duration, add=True)
        attrs["otel_ebpf.phase.request"] = result.request / 1e9
        attrs["otel_ebpf.phase.wait"] = result.wait / 1e9
        attrs["otel_ebpf.phase.response"] = result.response / 1e9
        attrs["otel_ebpf.time.server"] = result.server / 1e9
        attrs["otel_ebpf.time.network"] = result.network / 1e9
        if result.downstream:
            attrs["otel_ebpf.time.downstream"] = result.downstream / 1e9
        if result.estimated:
            attrs["otel_ebpf.time.estimated"] = True
        if result.stall:
            attrs["otel_ebpf.tcp.stall"] = result.stall
            attrs["otel_ebpf.tcp.stall.time"] = result.stall_ns / 1e9
            if not server_side:  # the client sent the held tail: was Nagle on?
                nodelay = self._nodelay(conn.pid, conn.fd)
                if nodelay is not None:
                    attrs["otel_ebpf.tcp.nodelay"] = nodelay
        attrs["otel_ebpf.verdict"] = result.verdict

    def _ids(self, token: object) -> tuple[SpanIds, SpanIds | None]:
        rc = token
        if isinstance(rc, RequestContext) and rc.resolved:
            trace_id, span_id, parent_id = rc.trace_id, rc.span_id, rc.parent_id
        else:  # built without correlation (tests, tools)
            rand = self._rand
            trace_id, span_id, parent_id = rand.getrandbits(128) or 1, rand.getrandbits(64) or 1, 0
        state = None
        if isinstance(rc, RequestContext) and rc.threshold and trace_id & RAND_BITS == rc.rand:
            state = sampling_state(rc.threshold)  # kept by the trace's own randomness
        parent = SpanIds(trace_id, parent_id, True) if parent_id else None
        return SpanIds(trace_id, span_id, False, state), parent

    def _sql(self, x: SqlExchange, conn: Connection) -> BuiltSpan:
        """Database client span: stable DB conventions, text sanitised unless asked."""
        operation = operation_of(x.query)
        collection = collection_of(x.query, operation)
        attrs: dict[str, str | int] = {"db.system.name": x.system}
        if x.namespace:
            attrs["db.namespace"] = x.namespace
        if operation:
            attrs["db.operation.name"] = operation
        if collection:
            attrs["db.collection.name"] = collection
        if x.query:
            dialect = "postgresql" if x.system == "postgresql" else "mysql"
            attrs["db.query.text"] = (
                x.query[:MAX_QUERY_TEXT] if self._raw_db_query_text else sanitize(x.query, dialect)
            )
        status = _UNSET
        if not x.answered:
            status = self._unanswered(attrs, conn, "a result")
        elif x.error_code is not None:
            attrs["db.response.status_code"] = x.error_code
            attrs["error.type"] = x.error_code
            status = Status(StatusCode.ERROR, self._error_text(x.error_message))
        name = f"{operation} {collection}" if collection else operation or x.system
        return self._client_span(name, x, conn, attrs, status)

    @staticmethod
    def _unanswered(attrs: dict[str, Any], conn: Connection, answer: str) -> Status:
        """No answer came: the span lasts until the connection ended, and says how."""
        if conn.reset:
            attrs["error.type"] = "connection_reset"
            return Status(StatusCode.ERROR, f"connection reset before {answer}")
        attrs["error.type"] = "no_response"
        return Status(StatusCode.ERROR, f"connection ended before {answer}")

    def _error_text(self, text: str | None) -> str | None:
        """Error texts (databases', gRPC's) quote the offending values: kept only with raw text."""
        return text if self._raw_db_query_text else scrub_message(text)

    def _client_span(
        self,
        name: str,
        x: SqlExchange | RedisExchange | DnsExchange,
        conn: Connection,
        attrs: dict[str, str | int],
        status: Status,
    ) -> BuiltSpan:
        return self._span(name, x, conn, attrs, status, _CLIENT)

    def _span(
        self,
        name: str,
        x: SqlExchange | RedisExchange | DnsExchange | Http2Exchange,
        conn: Connection,
        attrs: dict[str, str | int],
        status: Status,
        kind: SpanKind,
    ) -> BuiltSpan:
        """A span with the connection's network attributes (server.* is the far end
        for clients, this end for servers)."""
        attrs = {**_network_attributes(conn, kind is _SERVER), **attrs}  # DNS: udp
        self._network_facts(attrs, x.token, kind, x, conn)
        assert conn.process is not None
        return self._built(name, x.token, conn.process.resource, attrs, kind, status, x)

    def _built(
        self,
        name: str,
        token: object,
        resource: Resource,
        attrs: dict[str, Any],
        kind: SpanKind,
        status: Status,
        times: _Times,
        shared: dict[str, Any] | None = None,
    ) -> BuiltSpan:
        """The span itself: ids from the request's context, times on the wall clock;
        `shared`: the leading entries of `attrs`, shared with other spans."""
        context, parent = self._ids(token)
        start = self._clock.epoch(times.start_ts)
        return BuiltSpan(
            name,
            context,
            parent,
            resource,
            attrs,
            kind,
            status,
            start,
            max(self._clock.epoch(times.end_ts), start),
            SCOPE,
            shared,
        )

    def _redis(self, x: RedisExchange, conn: Connection) -> BuiltSpan:
        """Database client span, stable DB semantic conventions (db.system.name etc.)."""
        operation = x.name
        args = max(x.command.length - 1, 0)
        attrs: dict[str, str | int] = {
            "db.system.name": "redis",
            "db.operation.name": operation,
            # literals never leave: "SET ? ?" (bounded)
            "db.query.text": " ".join([operation] + ["?"] * min(args, MAX_QUERY_ARGS)),
        }
        status = _UNSET
        error = x.error
        if x.reply is None:
            status = self._unanswered(attrs, conn, "a reply")
        elif error is not None:
            attrs["db.response.status_code"] = error
            attrs["error.type"] = error
            status = Status(StatusCode.ERROR, self._error_text(x.reply.text.decode("latin-1")))
        return self._client_span(operation, x, conn, attrs, status)

    def watch_clock_steps(self) -> bool:
        """Also sample the wall clock the moment it is set (WallClock.watch_steps)."""
        return self._clock.watch_steps()

    def follow_wall_clock(self) -> int:
        """Samples the wall clock against the monotonic one, at every drain: span
        times stay on the time apps' SDKs stamp theirs with (the merge matches by
        time) as it is set (processors/wall_clock.py). Returns a step in
        nanoseconds (0: none of CLOCK_STEP_NS or more)."""
        return self._clock.sample()

    def _http(self, x: HttpExchange, conn: Connection) -> BuiltSpan:
        req, resp = x.request, x.response
        server = conn.role == Role.SERVER
        base, repeated = self._http_base(req, conn, server)
        attrs: dict[str, Any] = base.copy()  # its entries first: see BuiltSpan
        if x.request_body_bytes:
            attrs["http.request.body.size"] = x.request_body_bytes
        if resp is not None:
            if x.response_body_bytes:
                attrs["http.response.body.size"] = x.response_body_bytes
            status = _http_status(attrs, resp.status, server)
        else:
            status = self._unanswered(attrs, conn, "a response")
        kind = _SERVER if server else _CLIENT
        self._network_facts(attrs, x.token, kind, x, conn)
        assert conn.process is not None
        return self._built(
            req.method,
            x.token,
            conn.process.resource,
            attrs,
            kind,
            status,
            x,
            base if repeated else None,  # shared once its head repeats
        )

    def _http_base(
        self, req: HttpHead, conn: Connection, server: bool
    ) -> tuple[dict[str, Any], bool]:
        """What a request head and its connection say of an HTTP span, and whether
        it was made for an earlier span. Kept per connection for its last head: a
        keep-alive client repeats its own, and the same head bytes share one
        parse and its header dict (http1._head_fields), so a dict seen again is
        a head seen again. Their spans share it, and the encoder encodes it once.
        Nothing a response or the network decides goes here."""
        network = _network_attributes(conn, server)
        made = conn.http_span_base
        if (
            made is not None
            and made[0] is req.headers
            and made[1] == req.target
            and made[2] == req.method
            and made[3] == req.version
            and made[4] == req.truncated
            and made[5] is network
            and made[6] == server
        ):
            return made[7], True
        path, query, origin = self._urls.split(req.target)
        attrs: dict[str, Any] = {
            "http.request.method": req.method,
            "url.path": path,
            "url.scheme": "https" if conn.tls else "http",
            "network.protocol.name": "http",
            "network.protocol.version": req.version,
            **network,
        }
        if query is not None:
            attrs["url.query"] = query
        host, addr, port = self._host(req.headers.get("host", ""))
        remote = conn.remote
        if host:
            attrs["server.address"] = addr
            if port is not None:
                attrs["server.port"] = port
        if not server:
            authority = host or (f"{remote.address}:{remote.port}" if remote else "")
            origin = origin or f"{'https' if conn.tls else 'http'}://{authority}"
            attrs["url.full"] = (
                origin
                + (path if path.startswith("/") else "/" + path)
                + ("" if query is None else "?" + query)
            )
        if "user-agent" in req.headers:
            attrs["user_agent.original"] = req.headers["user-agent"]
        if req.truncated:
            attrs["otel_ebpf.http.headers_truncated"] = True
        conn.http_span_base = (
            req.headers,
            req.target,
            req.method,
            req.version,
            req.truncated,
            network,
            server,
            attrs,
        )
        return attrs, False

    def _host(self, header: str) -> tuple[str, str, int | None]:
        """A Host header's host[:port] (no userinfo), its address and its port."""
        named = self._hosts.get(header)
        if named is None:
            host = host_of(header)
            named = (host, *host_port(host)) if host else ("", "", None)
            if len(self._hosts) >= MAX_HOSTS:
                self._hosts.clear()
            self._hosts[header] = named
        return named

    def outlier(self, x: OutlierExchange, resource: Resource) -> BuiltSpan:
        """A shed request that failed or was slow, from what the kernel kept: the
        method, a server's path (to 64 bytes) or a client's Host, the status; it
        ends where its answer began. `otel_ebpf.span.partial` says so. A trace of
        its own: its peers' spans were shed, and its context was never parsed."""
        if x.protocol != "http":
            return self._db_outlier(x, resource)
        server = x.role == Role.SERVER
        method = known_method(x.method)
        attrs: dict[str, str | int | bool] = {
            "http.request.method": method,
            "url.scheme": "https" if x.tls else "http",
            "network.protocol.name": "http",
            "network.transport": "tcp",
            "otel_ebpf.span.partial": True,
        }
        if x.version:
            attrs["network.protocol.version"] = x.version
        if server:
            attrs["url.path"] = self._urls.split(x.path or "/")[0]
            attrs["server.port"] = x.port
        else:
            _, address, port = self._host(x.host)
            attrs["server.address"] = address or x.peer
            attrs["server.port"] = port if port is not None else x.port
            attrs["network.peer.address"] = x.peer
            attrs["network.peer.port"] = x.port
        if x.status:
            status = _http_status(attrs, x.status, server)
        else:
            attrs["error.type"] = "no_response"
            status = Status(StatusCode.ERROR, "the connection ended before a response")
        kind = _SERVER if server else _CLIENT
        return self._built(method, None, resource, attrs, kind, status, x)  # a new trace

    def _db_outlier(self, x: OutlierExchange, resource: Resource) -> BuiltSpan:
        """A shed database command that failed or was slow: its name, its error's
        code (the error's text, which may quote values, is not kept)."""
        attrs: dict[str, str | int | bool] = {
            **db_attributes(x),
            "network.peer.address": x.peer,
            "network.peer.port": x.port,
            "network.transport": "tcp",
            "otel_ebpf.span.partial": True,
        }
        status = _UNSET
        if x.error:
            status = _ERROR
        elif not x.status:
            status = Status(StatusCode.ERROR, "the connection ended before an answer")
        name = f"{x.method} {x.path}" if x.path else x.method or x.protocol
        return self._built(name, None, resource, attrs, _CLIENT, status, x)


class _Times(Protocol):
    @property
    def start_ts(self) -> int: ...
    @property
    def end_ts(self) -> int: ...


def _network_attributes(conn: Connection, server: bool) -> dict[str, str | int]:
    """What a connection's ends say of its spans: network.*, server.* (the far end
    for clients, this end for servers; an HTTP Host header may still name it) and
    a server's client.*. Made once per connection, not per span."""
    local, remote = conn.local, conn.remote
    made = conn.network_attributes
    if made is not None and made[0] is local and made[1] is remote:
        return made[2]
    attrs: dict[str, str | int] = {
        "network.transport": "tcp",
        "network.type": "ipv6" if conn.ipv6 else "ipv4",
    }
    server_end = local if server else remote
    if server_end is not None:
        attrs["server.address"] = server_end.address
        attrs["server.port"] = server_end.port
    if remote is not None:
        attrs["network.peer.address"] = remote.address
        attrs["network.peer.port"] = remote.port
        if server:
            attrs["client.address"] = remote.address
            attrs["client.port"] = remote.port
    conn.network_attributes = (local, remote, attrs)
    return attrs


def _http_status(attrs: dict[str, Any], code: int, server: bool) -> Status:
    """An HTTP answer's status: an error for 5xx, and for 4xx on a client's side."""
    attrs["http.response.status_code"] = code
    if code >= 500 or (code >= 400 and not server):
        attrs["error.type"] = str(code)
        return _ERROR
    return _UNSET


_GRPC_SERVER_ERRORS: Final = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


def _as_http(x: Http2Exchange) -> HttpExchange:
    """Plain HTTP/2 reads like HTTP/1 to the span builder: same conventions, version "2"."""
    headers = {**x.headers, "host": x.authority} if x.authority else x.headers
    request = HttpHead(True, x.method, x.path, 0, "2", headers, x.start_ts, False)
    response = (
        HttpHead(False, "", "", x.status, "2", {}, x.end_ts, False)
        if x.status is not None
        else None
    )
    return HttpExchange(
        request, x.request_bytes, response, x.response_bytes, x.start_ts, x.end_ts, x.token
    )


def _message_bounds(x: Exchange) -> tuple[int, int | None]:
    """When the request ended and the response began, where the protocol says;
    else the request is taken as one instant and the answer as arriving whole."""
    if isinstance(x, HttpExchange):
        response = x.response
        return x.request_end_ts or x.start_ts, response.start_ts if response else None
    return x.start_ts, x.end_ts if x.answered else None


def _remember(table: OrderedDict[int, Any], key: int, value: Any, add: bool = False) -> None:
    """Bounded: an entry whose other end never comes is dropped in time."""
    table[key] = table.get(key, 0) + value if add else value
    if len(table) > 4096:
        table.popitem(last=False)
