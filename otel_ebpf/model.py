"""Typed records, one kind per pipeline stage, documented in one place.

kernel events (receivers) -> HttpHead/HttpEnd (parsers) -> an `Exchange` per
request (HttpExchange, Http2Exchange, RedisExchange, SqlExchange, DnsExchange)
-> a `BuiltSpan` (processors.spans), read like the SDK's ReadableSpan.
NamedTuples, immutable and typed; the ones made several times a request are
plain classes (compiled, a fraction of a NamedTuple's constructor), read-only
by convention (DataEvent and HttpHead give a changed copy with `replace()`).
"""

from __future__ import annotations

import enum
from typing import Any, Final, NamedTuple, TypeAlias, TypeVar

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, TraceFlags, TraceState

# What a request's owner attaches to it when it begins (its trace context),
# opaque here. Named, as compiled a NamedTuple field typed `object` fails at import.
Token: TypeAlias = object


class Direction(enum.IntEnum):
    """Which way bytes moved, seen from the traced process."""

    EGRESS = 0
    INGRESS = 1


class Role(enum.IntEnum):
    """The traced process's side of a TCP connection."""

    UNKNOWN = 0
    CLIENT = 1  # it called connect()
    SERVER = 2  # it accepted the connection


class Endpoint(NamedTuple):
    address: str
    port: int


class OtlpSender(NamedTuple):
    """The socket an app sent spans from, and the port of ours it sent them to:
    one local port can carry connections to several destinations at once (to
    the OTLP port and the health port, say), so only the pair names the process."""

    client: Endpoint
    listener_port: int


# --- kernel events (bpf/sockets.bpf.c -> receivers.sockets) -------------------


class GoroutineLink(NamedTuple):
    """The goroutine a Go process's call moved bytes for (bpf/go.bpf.c): its owner
    (a g address, meaningful within the process), and when the calling goroutine
    was handed the owner's request (a server request of the owner's that began
    later is not the one)."""

    owner: int
    until: int  # when the link was made (0: the goroutine is its own owner)


NODE_CALLBACK: Final = 1 << 63  # a DataEvent.task naming a Node callback (bpf/node.bpf.c)


_DATA_EVENT_FIELDS: Final = (
    "sk",
    "gen",
    "direction",
    "role",
    "pid",
    "tid",
    "fd",
    "ts",
    "offset",
    "length",
    "cap_offset",
    "payload",
    "comm",
    "retransmits",
    "srtt_us",
    "send_wait_ns",
    "window_small",
    "red_counted",
    "after_shed",
    "rand",
    "threshold",
    "goroutine",
    "task",
    "task_cause",
    "retransmit_stamp",
)


_Record = TypeVar("_Record")


def _copy_with(record: _Record, names: tuple[str, ...], changes: dict[str, Any]) -> _Record:
    """A new record of `record`'s class, its `names` fields copied and `changes`
    applied: `replace` of the compiled records (tests, tools, a rare end)."""
    fields = {name: getattr(record, name) for name in names}
    fields.update(changes)
    return type(record)(**fields)


class DataEvent:
    """Bytes moved by one send/recv-family call on a TCP socket. A plain class,
    not a NamedTuple: four come per request, and compiled a class of 25 fields
    is made in a fraction of a tuple's time (a NamedTuple's constructor is
    interpreted)."""

    def __init__(
        self,
        sk: int,  # kernel socket address: the connection's identity while it lives
        gen: int,  # the kernel's generation of that address (changes when it is reused)
        direction: Direction,
        role: Role,
        pid: int,
        tid: int,
        fd: int,  # 0 where the syscall is not known (sendfile, splice)
        ts: int,  # CLOCK_MONOTONIC nanoseconds
        offset: int,  # stream offset of the call's first byte in this direction
        length: int,  # bytes the call moved
        cap_offset: int,  # stream offset of payload[0]
        payload: bytes,  # the first bytes, bounded by the capture size
        comm: bytes,  # the kernel's 16-byte task name, NUL-padded
        retransmits: int = 0,  # the connection's retransmitted segments so far
        srtt_us: int = 0,  # its smoothed RTT at the last segment received (0: not known)
        send_wait_ns: int = 0,  # its sends' wait for send-buffer room, before this call
        window_small: int = 0,  # its segments seen while a receive window was nearly shut
        red_counted: bool = False,  # the kernel counts the HTTP/1 request at its first byte
        after_shed: bool = False,  # calls before it in its direction were shed: a gap
        rand: int = 0,  # red_counted: the request's 56-bit random value (span budget)
        threshold: int = 0,  # what it was kept against (0: no budget; processors.budget)
        goroutine: GoroutineLink | None = None,  # a probed Go process's (None: any other)
        # The asyncio task whose step made the call, or (NODE_CALLBACK set) the Node
        # callback that did, and the socket whose read began that callback (0: none).
        task: int = 0,
        task_cause: int = 0,
        # The kernel's count of all retransmits (+1) when `retransmits` was read:
        # while it reads the same, `retransmits` is current (0: not known).
        retransmit_stamp: int = 0,
    ) -> None:
        self.sk = sk
        self.gen = gen
        self.direction = direction
        self.role = role
        self.pid = pid
        self.tid = tid
        self.fd = fd
        self.ts = ts
        self.offset = offset
        self.length = length
        self.cap_offset = cap_offset
        self.payload = payload
        self.comm = comm
        self.retransmits = retransmits
        self.srtt_us = srtt_us
        self.send_wait_ns = send_wait_ns
        self.window_small = window_small
        self.red_counted = red_counted
        self.after_shed = after_shed
        self.rand = rand
        self.threshold = threshold
        self.goroutine = goroutine
        self.task = task
        self.task_cause = task_cause
        self.retransmit_stamp = retransmit_stamp

    def replace(self, **changes: Any) -> DataEvent:
        """A copy with `changes` (tests and tools: the event path never needs one)."""
        return _copy_with(self, _DATA_EVENT_FIELDS, changes)

    def __repr__(self) -> str:
        return (
            f"DataEvent(sk={self.sk:#x}, gen={self.gen}, {self.direction.name} {self.role.name}, "
            f"pid={self.pid}, tid={self.tid}, ts={self.ts}, offset={self.offset}, "
            f"length={self.length}, payload={self.payload[:32]!r})"
        )


class RedCount(NamedTuple):
    """Requests counted in the kernel since the last read, for one process, role,
    port, method, version, status, and a server's path or a client's Host and
    peer; durations in nanoseconds. HTTP/1 both ends; Redis a client's commands
    (`method` the command's name, `error` an error reply's code); PostgreSQL a
    client's simple queries (`method` the operation, `path` the table, `host`
    the database, `error` the SQLSTATE)."""

    pid: int
    comm: bytes  # the kernel's task name, for a process that exits before it is read
    role: Role
    port: int  # a server's own; a client's peer's
    method: str
    path: str  # a server's: up to '?', cut at 64 bytes
    host: str  # a client's Host header ("" for a server)
    peer: str  # a client's peer address ("" for a server)
    version: str  # "1.1", "1.0", "" (not seen)
    status: int  # 0: never answered (the connection closed first); databases: 1 answered
    tls: bool  # read through the OpenSSL uprobes: https
    protocol: str  # "http", "redis", "postgresql"
    error: str  # databases: the error's code ("WRONGTYPE", "42P01"), "" for none
    requests: int
    sum_ns: int
    min_ns: int
    max_ns: int
    buckets: tuple[int, ...]  # per HTTP_BUCKETS (databases: KERNEL_BUCKETS) bound, and one past


class DatagramEvent(NamedTuple):
    """One UDP datagram to or from a DNS server (the only UDP the kernel sends)."""

    sk: int
    direction: Direction
    pid: int
    tid: int
    fd: int
    ts: int
    length: int
    payload: bytes
    comm: bytes
    peer: Endpoint
    ipv6: bool


# The plaintext stream of a TLS connection (OpenSSL uprobes) is keyed by its
# socket address with this bit set: a struct sock is never at an odd address.
TLS_STREAM: Final = 1


def base_socket(sk: int) -> int:
    """The socket a (possibly plaintext-stream) key belongs to. A socket's own key
    is returned as it is: a kernel address is a boxed int, and masking it would
    make a new one for every event."""
    return sk & ~TLS_STREAM if sk & TLS_STREAM else sk


class ConnOpen(NamedTuple):
    """A TCP connection reached ESTABLISHED."""

    sk: int
    ts: int
    role: Role
    pid: int  # the connecting process for clients; 0 until data for servers
    local: Endpoint
    remote: Endpoint
    ipv6: bool


class ConnClose(NamedTuple):
    """A TCP connection reached CLOSE; totals are the kernel's counters."""

    sk: int
    ts: int
    bytes_egress: int
    bytes_ingress: int
    role: Role = Role.UNKNOWN
    pid: int = 0
    local: Endpoint | None = None
    remote: Endpoint | None = None
    opened: int = 0  # when the kernel first saw it (0: before the collector started)
    retransmits: int = 0
    srtt_us: int = 0
    resets_in: int = 0
    resets_out: int = 0
    connect_failed: bool = False  # it never left SYN_SENT

    @property
    def failure(self) -> str | None:
        """Why a connect failed: refused (RST), timeout (SYNs retransmitted), unreachable."""
        if not self.connect_failed:
            return None
        if self.resets_in:
            return "refused"
        return "timeout" if self.retransmits else "unreachable"


class ConnCounters(NamedTuple):
    """A live connection's counters, read from the kernel's connection map."""

    sk: int
    gen: int  # when the kernel first saw it: ConnClose.opened of the same connection
    pid: int
    role: Role
    bytes_egress: int
    bytes_ingress: int
    retransmits: int
    resets_in: int
    resets_out: int


class ResetSent(NamedTuple):
    """This host sent a RST on a connection that had already closed (an abortive close)."""

    sk: int
    ts: int
    pid: int
    local: Endpoint
    remote: Endpoint


class SelfConn(NamedTuple):
    """The collector itself used this socket: its peer must not be traced."""

    sk: int


class ProcessExec(NamedTuple):
    """A process began running a new program (sent where goroutine context is
    possible: a Go program is probed before it serves its first request)."""

    pid: int


class SocketBufferSet(NamedTuple):
    """A process set a socket's buffer size after the socket's handshake, when the
    TCP window scale is already fixed (`setsockopt(SO_RCVBUF)` and the like)."""

    pid: int
    fd: int
    option: str  # "SO_RCVBUF", "SO_SNDBUF", ...
    value: int
    ts: int
    comm: bytes


class OutlierExchange(NamedTuple):
    """An HTTP/1 request or database command the span budget shed that failed or
    was slow: what the kernel kept of it (the head's first bytes, the status, two
    times) makes its span. Fields as RedCount's."""

    sk: int
    start_ts: int  # the call that carried the request
    end_ts: int  # its answer's first call, or the connection's close (unanswered)
    pid: int
    comm: bytes  # the kernel's task name, NUL-padded
    role: Role
    port: int  # a server's own; a client's peer's
    method: str
    path: str  # a server's: up to '?', cut at 64 bytes
    host: str  # a client's Host header
    peer: str  # a client's peer address
    version: str  # "1.1", "1.0", ""
    status: int  # 0: never answered
    tls: bool
    protocol: str  # "http", "redis", "postgresql"
    error: str  # databases: the error's code


KernelEvent = (
    DataEvent
    | DatagramEvent
    | ConnOpen
    | ConnClose
    | ResetSent
    | SelfConn
    | SocketBufferSet
    | OutlierExchange
    | ProcessExec
)


# --- HTTP/1 parser output (processors.protocols.http1) -------------------------


class HttpHead:
    """A request line or status line with its kept headers. Plain classes, this
    and HttpEnd, not NamedTuples: two of each per exchange, and compiled a class
    is made in a fraction of a NamedTuple's (interpreted) constructor's time."""

    def __init__(
        self,
        is_request: bool,
        method: str,  # requests only
        target: str,  # requests only
        status: int,  # responses only
        version: str,  # "1.1", "1.0"
        headers: dict[str, str],  # allow-listed, lower-case names
        start_ts: int,  # time of the call that carried the first byte
        truncated: bool,  # header block not fully captured
        stream_offset: int = 0,  # position of the first byte in this direction's stream
    ) -> None:
        self.is_request = is_request
        self.method = method
        self.target = target
        self.status = status
        self.version = version
        self.headers = headers
        self.start_ts = start_ts
        self.truncated = truncated
        self.stream_offset = stream_offset

    def _fields(self) -> tuple[object, ...]:
        return (
            self.is_request,
            self.method,
            self.target,
            self.status,
            self.version,
            self.headers,
            self.start_ts,
            self.truncated,
            self.stream_offset,
        )

    def replace(self, **changes: Any) -> HttpHead:
        """A copy with `changes` (tests and tools)."""
        return _copy_with(self, _HTTP_HEAD_FIELDS, changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpHead) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "HttpHead" + repr(self._fields())


_HTTP_HEAD_FIELDS: Final = (
    "is_request",
    "method",
    "target",
    "status",
    "version",
    "headers",
    "start_ts",
    "truncated",
    "stream_offset",
)


class HttpEnd:
    """The last byte of a message (or where the parser lost it)."""

    def __init__(self, end_ts: int, body_bytes: int, complete: bool) -> None:
        self.end_ts = end_ts
        self.body_bytes = body_bytes
        self.complete = complete  # False: ended by lost sync or by the connection closing early

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpEnd) and (self.end_ts, self.body_bytes, self.complete) == (
            other.end_ts,
            other.body_bytes,
            other.complete,
        )

    def __repr__(self) -> str:
        return f"HttpEnd({self.end_ts}, {self.body_bytes}, {self.complete})"


class Declined(Exception):
    """A parser will not follow a connection within its bounds (an HPACK table
    larger than we keep): the tracker stops parsing that connection and counts it.
    The one exception a parser raises on purpose, like h11's RemoteProtocolError."""


class ParseError(NamedTuple):
    """Bytes that are not HTTP/1 where a message should start."""

    reason: str


ParserEvent = HttpHead | HttpEnd | ParseError


class HttpExchange:
    """One request with its final response (response fields None if none came).
    A plain class, as HttpHead is: one per exchange and side, and a NamedTuple's
    constructor is interpreted. `_replace` as the other exchanges have it."""

    def __init__(
        self,
        request: HttpHead,
        request_body_bytes: int,
        response: HttpHead | None,
        response_body_bytes: int,
        start_ts: int,  # first request byte, as the traced process saw it
        end_ts: int,  # last response byte (or last request byte without a response)
        token: Token = None,  # what the connection's owner attached when the request began
        request_end_ts: int = 0,  # last request byte (0: not known)
    ) -> None:
        self.request = request
        self.request_body_bytes = request_body_bytes
        self.response = response
        self.response_body_bytes = response_body_bytes
        self.start_ts = start_ts
        self.end_ts = end_ts
        self.token = token
        self.request_end_ts = request_end_ts

    @property
    def answered(self) -> bool:
        return self.response is not None

    def _fields(self) -> tuple[object, ...]:
        return (
            self.request,
            self.request_body_bytes,
            self.response,
            self.response_body_bytes,
            self.start_ts,
            self.end_ts,
            self.token,
            self.request_end_ts,
        )

    def _replace(self, **changes: Any) -> HttpExchange:
        return _copy_with(self, _HTTP_EXCHANGE_FIELDS, changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpExchange) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "HttpExchange" + repr(self._fields())


_HTTP_EXCHANGE_FIELDS: Final = (
    "request",
    "request_body_bytes",
    "response",
    "response_body_bytes",
    "start_ts",
    "end_ts",
    "token",
    "request_end_ts",
)


class RequestStarted:
    """A parser read a request's start: in its output, in stream order, before
    anything that ends that request. The tracker gives it its context (thread,
    trace) in `context`; the parser's exchange carries that context as its token
    where the tracker gave it before the exchange ended, else this record, which
    the tracker swaps for the context as the exchange leaves it."""

    __slots__ = ("context", "head")

    def __init__(self, head: HttpHead | RequestHead) -> None:
        self.head = head
        self.context: Token = None


class RequestHead(NamedTuple):
    """Where a request of a protocol without HttpHead began: what the correlation
    needs (HTTP/2 fills in the headers; Redis and the SQL protocols leave them empty)."""

    start_ts: int
    stream_offset: int
    headers: dict[str, str]


# -- exchanges of the other protocols (their parsers: processors/protocols/) --


class DnsMessage(NamedTuple):
    id: int
    is_response: bool
    rcode: str  # "NOERROR", "NXDOMAIN", "SERVFAIL", ...
    name: str  # question name without the trailing dot ("" if none)
    qtype: str  # "A", "AAAA", ...
    answers: tuple[str, ...]  # addresses (A/AAAA), else the records' text


class DnsExchange(NamedTuple):
    """One query and its answer; `response` None when none came (timeout, close)."""

    query: DnsMessage
    response: DnsMessage | None
    start_ts: int
    end_ts: int
    transport: str  # "udp" or "tcp"
    timed_out: bool = False
    token: Token = None

    @property
    def answered(self) -> bool:
        return self.response is not None


class Http2Exchange(NamedTuple):
    """One stream: request headers, response status, gRPC status, sizes."""

    stream_id: int
    method: str
    path: str
    authority: str
    scheme: str
    headers: dict[str, str]  # allow-listed request headers, lower-case names
    status: int | None  # :status (None if no response headers came)
    grpc_status: int | None
    grpc_message: str | None
    request_bytes: int  # DATA payload bytes each way
    response_bytes: int
    start_ts: int
    end_ts: int
    reset: bool  # ended by RST_STREAM
    ended: bool  # the server finished the stream (END_STREAM or RST_STREAM)
    token: Token = None

    @property
    def answered(self) -> bool:
        return self.ended

    @property
    def grpc(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/grpc")


class RespValue:
    """One RESP value: a scalar's preview, or an aggregate with its first items.
    Plain compiled classes, this and RedisExchange, as HttpHead: several values
    a command, and a NamedTuple's constructor is interpreted."""

    def __init__(
        self,
        kind: int,  # the RESP type byte, e.g. ord("*")
        text: bytes,  # preview of a scalar (error text, status, bulk prefix)
        items: tuple[RespValue, ...],  # first elements of an aggregate
        length: int,  # elements in an aggregate (-1 for null)
        start_ts: int,
        end_ts: int,
    ) -> None:
        self.kind = kind
        self.text = text
        self.items = items
        self.length = length
        self.start_ts = start_ts
        self.end_ts = end_ts

    def _fields(self) -> tuple[object, ...]:
        return (self.kind, self.text, self.items, self.length, self.start_ts, self.end_ts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RespValue) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "RespValue" + repr(self._fields())


class RedisExchange:
    """One command and its reply (None when the connection ended first)."""

    def __init__(
        self,
        command: RespValue,
        reply: RespValue | None,
        start_ts: int,
        end_ts: int,
        token: Token = None,  # what the connection's owner attached when the command began
    ) -> None:
        self.command = command
        self.reply = reply
        self.start_ts = start_ts
        self.end_ts = end_ts
        self.token = token

    @property
    def answered(self) -> bool:
        return self.reply is not None

    @property
    def name(self) -> str:
        first = self.command.items[0].text if self.command.items else self.command.text
        return first.split(b" ", 1)[0].decode("latin-1").upper()

    @property
    def error(self) -> str | None:
        """'ERR', 'WRONGTYPE', ... for an error reply."""
        if self.reply is None or self.reply.kind not in (ord("-"), ord("!")):
            return None
        return self.reply.text.split(b" ", 1)[0].decode("latin-1") or "ERR"

    def _fields(self) -> tuple[object, ...]:
        return (self.command, self.reply, self.start_ts, self.end_ts, self.token)

    def _replace(self, **changes: Any) -> RedisExchange:
        return _copy_with(self, _REDIS_EXCHANGE_FIELDS, changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RedisExchange) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "RedisExchange" + repr(self._fields())


_REDIS_EXCHANGE_FIELDS: Final = ("command", "reply", "start_ts", "end_ts", "token")


class SqlExchange(NamedTuple):
    """One statement execution and its outcome."""

    system: str  # db.system.name: "postgresql", "mysql", "mariadb"
    query: str  # the statement as sent (possibly cut at the capture size)
    namespace: str | None  # database named when the connection started, if seen
    start_ts: int
    end_ts: int
    answered: bool  # False: the connection ended (or we stopped watching) first
    error_code: str | None = None  # SQLSTATE / MySQL error number
    error_message: str | None = None
    prepared: bool = False  # executed from a prepared statement (text came from its prepare)
    token: Token = None


# One L7 record per request, whatever the protocol; each has `answered` and `token`.
Exchange = HttpExchange | Http2Exchange | RedisExchange | SqlExchange | DnsExchange
SqlOutput = SqlExchange | RequestStarted  # what the SQL parsers give for bytes fed


# --- spans (processors.spans -> metrics, merge, export) -----------------------


SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)


class SpanIds:
    """A built span's context, or its parent's: what the SDK's SpanContext offers
    its readers, as plain fields (the SDK's is an interpreted constructor and a
    property call per read). Every span the collector builds is sampled."""

    def __init__(
        self, trace_id: int, span_id: int, is_remote: bool, trace_state: TraceState | None = None
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.is_remote = is_remote
        self.trace_state = trace_state
        self.trace_flags = SAMPLED

    @property
    def is_valid(self) -> bool:
        return self.trace_id != 0 and self.span_id != 0


class BuiltSpan:
    """A span the collector built from an exchange. It offers what the SDK's
    ReadableSpan offers its readers (metrics, merge, exporters, the SDK's own
    encoder), as plain fields: compiled, it is made in a fraction of a
    ReadableSpan's time, and read without an interpreted property call per field.
    Read-only by convention, as a finished span is."""

    # What an exchange's span never has.
    events: tuple[Any, ...] = ()
    links: tuple[Any, ...] = ()
    dropped_attributes: int = 0
    dropped_events: int = 0
    dropped_links: int = 0

    def __init__(
        self,
        name: str,
        context: SpanIds,
        parent: SpanIds | None,
        resource: Resource,
        attributes: dict[str, Any],
        kind: SpanKind,
        status: Status,
        start_time: int,
        end_time: int,
        instrumentation_scope: InstrumentationScope,
        shared_attributes: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.resource = resource
        self.attributes = attributes
        self.kind = kind
        self.status = status
        self.start_time = start_time
        self.end_time = end_time
        self.instrumentation_scope = instrumentation_scope
        # `attributes` begins with exactly these entries, in this order, and this
        # object is shared by the spans of one connection's repeated request head
        # (never changed once shared): the OTLP encoder encodes it once for all.
        self.shared_attributes = shared_attributes

    def get_span_context(self) -> SpanIds:
        return self.context


# A finished span, the collector's own or an app's SDK's (received over OTLP).
FinishedSpan: TypeAlias = BuiltSpan | ReadableSpan


# --- CPU profiles (bpf/profile.bpf.c -> receivers.profiler -> processors.profiling) ---


class StackCount(NamedTuple):
    """Samples the kernel counted for one process, thread name and pair of stacks."""

    pid: int
    comm: str  # the sampled thread's name
    user: tuple[int, ...]  # return addresses, leaf first; () when not walkable
    kernel: tuple[int, ...]
    samples: int  # on-CPU samples
    tid: int = 0  # set with `request` only
    request: int = 0  # the start (ns) of the HTTP/1 request the thread was reading; 0: none
    off_cpu_ns: int = 0  # time blocked at these stacks (off-CPU profiling)


class Frame(NamedTuple):
    """One symbolised stack frame."""

    function: str
    module: str  # the binary's path, "[kernel]", "[jit]" or "[unknown]"


class ProfiledStack(NamedTuple):
    """A symbolised stack (leaf first) and how many samples it had."""

    pid: int
    comm: str
    frames: tuple[Frame, ...]
    samples: int  # on-CPU samples
    trace_id: int = 0  # the span it was sampled under (span tie-in); 0: none
    span_id: int = 0
    off_cpu_ns: int = 0  # time blocked at this stack


class ProfileWindow(NamedTuple):
    """What one read of the kernel's counts gave, symbolised, for the exporters."""

    start_ns: int  # wall clock (Unix ns)
    end_ns: int
    period_ns: int  # CPU time one sample stands for
    stacks: list[ProfiledStack]
    resources: dict[int, dict[str, object]]  # pid -> the resource attributes its spans carry
    samples_lost: int  # not counted (no room) in this window
    off_cpu: bool = False  # off-CPU time was measured too
    stacks_lost: int = 0  # counted, but with no room in the stack maps for their stack
