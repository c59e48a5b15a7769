"""Typed records, one kind per pipeline stage, documented in one place.

kernel events (receivers) -> HttpHead/HttpEnd (parsers) -> HttpExchange (L7 record)
-> ReadableSpan (OpenTelemetry SDK, built by processors.spans).
NamedTuples: cheap to build on the hot path, immutable, typed.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


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


# --- kernel events (bpf/sockets.bpf.c -> receivers.sockets) -------------------


class DataEvent(NamedTuple):
    """Bytes moved by one send/recv-family call on a TCP socket."""

    sk: int  # kernel socket address: the connection's identity while it lives
    gen: int  # the kernel's generation of that address (changes when it is reused)
    direction: Direction
    role: Role
    pid: int
    tid: int
    fd: int  # 0 where the syscall is not known (sendfile, splice)
    ts: int  # CLOCK_MONOTONIC nanoseconds
    offset: int  # stream offset of the call's first byte in this direction
    length: int  # bytes the call moved
    cap_offset: int  # stream offset of payload[0]
    payload: bytes  # the first bytes, bounded by the capture size
    comm: bytes  # the kernel's 16-byte task name, NUL-padded
    retransmits: int = 0  # the connection's retransmitted segments so far
    srtt_us: int = 0  # its smoothed RTT at the last segment received (0: not known)
    send_wait_ns: int = 0  # its sends' wait for send-buffer room, before this call
    window_small: int = 0  # its segments seen while a receive window was nearly shut


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
TLS_STREAM = 1


def base_socket(sk: int) -> int:
    """The socket a (possibly plaintext-stream) key belongs to."""
    return sk & ~TLS_STREAM


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


class SocketBufferSet(NamedTuple):
    """A process set a socket's buffer size after the socket's handshake, when the
    TCP window scale is already fixed (`setsockopt(SO_RCVBUF)` and the like)."""

    pid: int
    fd: int
    option: str  # "SO_RCVBUF", "SO_SNDBUF", ...
    value: int
    ts: int
    comm: bytes


KernelEvent = (
    DataEvent | DatagramEvent | ConnOpen | ConnClose | ResetSent | SelfConn | SocketBufferSet
)


# --- HTTP/1 parser output (processors.protocols.http1) -------------------------


class HttpHead(NamedTuple):
    """A request line or status line with its kept headers."""

    is_request: bool
    method: str  # requests only
    target: str  # requests only
    status: int  # responses only
    version: str  # "1.1", "1.0"
    headers: dict[str, str]  # allow-listed, lower-case names
    start_ts: int  # time of the call that carried the first byte
    truncated: bool  # header block not fully captured
    stream_offset: int = 0  # position of the first byte in this direction's stream


class HttpEnd(NamedTuple):
    """The last byte of a message (or where the parser lost it)."""

    end_ts: int
    body_bytes: int
    complete: bool  # False: ended by lost sync or by the connection closing early


class Declined(Exception):
    """A parser will not follow a connection within its bounds (an HPACK table
    larger than we keep): the tracker stops parsing that connection and counts it.
    The one exception a parser raises on purpose, like h11's RemoteProtocolError."""


class ParseError(NamedTuple):
    """Bytes that are not HTTP/1 where a message should start."""

    reason: str


ParserEvent = HttpHead | HttpEnd | ParseError


class HttpExchange(NamedTuple):
    """One request with its final response (response fields None if none came)."""

    request: HttpHead
    request_body_bytes: int
    response: HttpHead | None
    response_body_bytes: int
    start_ts: int  # first request byte, as the traced process saw it
    end_ts: int  # last response byte (or last request byte without a response)
    token: object = None  # what the connection's owner attached when the request began
    request_end_ts: int = 0  # last request byte (0: not known)

    @property
    def answered(self) -> bool:
        return self.response is not None
