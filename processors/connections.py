"""What the tracker knows of each connection, and where a connection's ends come
from when its open was not seen (/proc)."""

from __future__ import annotations

import time
from typing import Any, Protocol

import psutil

from otel_ebpf.model import TLS_STREAM, DataEvent, Endpoint, Role
from otel_ebpf.processes import ProcessInfo
from otel_ebpf.processors.correlate import RequestContext


class ProtocolParser(Protocol):
    """What the tracker needs of a connection-level parser (HTTP/1, RESP, SQL, ...).
    Sans-I/O: bytes in; out, in stream order, a `RequestStarted` for each request
    begun and the exchanges ended (each carrying its request's RequestStarted)."""

    parse_errors: int
    abandoned: list[Any]  # RequestStarted of requests it gave up on (more in flight than kept)

    def feed(self, is_request: bool, data: bytes, ts: int) -> list[Any]: ...
    def skip(self, is_request: bool, n: int, ts: int) -> list[Any]: ...
    # bytes of whole exchanges the kernel shed (span budget), from a request's start
    def skip_shed(self, is_request: bool, n: int, ts: int) -> list[Any]: ...
    def close(self, ts: int) -> list[Any]: ...
    def skippable(self, is_request: bool) -> int: ...
    def not_protocol(self, is_request: bool) -> bool: ...


class Connection:
    """What we know of one TCP connection, from one process's side."""

    __slots__ = (
        "closed_at",
        "exchanges",
        "fd",
        "gen",
        "held",
        "http_span_base",
        "in_flight",
        "ipv6",
        "last_done",
        "local",
        "network_attributes",
        "pid",
        "process",
        "proto",
        "proto_name",
        "protos_tried",
        "quiet",
        "red_next",
        "remote",
        "requests",
        "reset",
        "retransmit_stamp",
        "retransmits",
        "role",
        "seen_from_start",
        "selected",
        "send_wait_ns",
        "sk",
        "srtt_us",
        "stream_pos",
        "undecided",
        "window_small",
        "writer_cause",
        "writer_task",
        "writer_tid",
    )

    def __init__(self, sk: int, role: Role = Role.UNKNOWN) -> None:
        self.sk = sk
        self.gen = 0  # kernel generation, from the first data event
        self.role = role
        self.pid = 0
        self.fd = 0  # the owner's descriptor for it, once a call named it
        self.local: Endpoint | None = None
        self.remote: Endpoint | None = None
        self.ipv6 = False
        self.process: ProcessInfo | None = None
        self.selected: bool | None = None  # decided at the first data event
        self.seen_from_start = False  # its handshake was seen: offset 0 is its first byte
        self.proto: ProtocolParser | None = None  # chosen at the first data event
        self.proto_name = ""  # and its name ("http", "redis", ...)
        self.protos_tried: tuple[str, ...] = ()  # guesses its first bytes proved wrong
        self.stream_pos: list[int | None] = [None, None]  # next expected offset per direction
        self.quiet = [0, 0]  # quiet offsets already sent to the kernel
        self.undecided = 0  # calls seen of a pre-existing connection whose role is unknown
        self.held: list[DataEvent] = []  # calls that arrived before the calls preceding them
        self.requests = 0  # requests started on it
        # Their contexts until reported (an ordered set: removal is O(1)).
        self.in_flight: dict[RequestContext, None] = {}
        self.exchanges = 0  # exchanges reported for it
        self.closed_at = 0  # when the kernel closed it, while it lingers for a late read
        self.reset = False  # it ended with a RST (sent or received)
        self.retransmits = 0  # the kernel's counters as of its last event
        self.retransmit_stamp = 0  # that event's (DataEvent.retransmit_stamp)
        self.srtt_us = 0
        self.send_wait_ns = 0
        self.window_small = 0
        self.writer_tid = 0  # the thread of its last write (a server's: who answered)
        self.writer_task = 0  # a server's: the asyncio task that wrote since its last read
        # a server's: the socket whose read began the Node callback that first
        # wrote since its last read (0: none)
        self.writer_cause = 0
        self.last_done: object = None  # a client's: its last finished request's context
        # The kernel counts the next request that starts (its read began with it).
        self.red_next = False
        # Its spans' attributes that only its ends decide, and the ends they
        # were made for (spans.py): made once, not per span.
        self.network_attributes: (
            tuple[Endpoint | None, Endpoint | None, dict[str, str | int]] | None
        ) = None
        # Its last HTTP request head's span attributes, after what they were made
        # from (the head's parsed headers, target, method, version and whether it
        # was cut; the network attributes; the role): its keep-alive requests
        # repeat their head, and their spans share these (spans.py).
        self.http_span_base: (
            tuple[object, str, str, str, bool, object, bool, dict[str, Any]] | None
        ) = None

    @property
    def tls(self) -> bool:
        """The plaintext stream of a TLS connection, from the OpenSSL uprobes."""
        return bool(self.sk & TLS_STREAM)

    @property
    def server_port(self) -> int:
        end = self.local if self.role == Role.SERVER else self.remote
        return end.port if end else 0


class ProcSockets:
    """Tuples of sockets that predate us, from /proc (no kernel structs read).

    One snapshot per process, reused for `ttl_s`: at start-up on a busy node
    thousands of old connections resolve from one read of the socket tables.
    """

    def __init__(self, ttl_s: float = 2.0) -> None:
        self._ttl = ttl_s
        self._snapshots: dict[int, tuple[float, dict[int, tuple[Endpoint, Endpoint]]]] = {}

    def lookup(self, pid: int, fd: int) -> tuple[Endpoint, Endpoint] | None:
        now = time.monotonic()
        snap = self._snapshots.get(pid)
        stale = snap is not None and fd not in snap[1] and now - snap[0] > 0.1
        if snap is None or stale or now - snap[0] > self._ttl:
            if len(self._snapshots) > 1024:
                self._snapshots.clear()
            snap = self._snapshots[pid] = (now, self._read(pid))
        return snap[1].get(fd)

    @staticmethod
    def _read(pid: int) -> dict[int, tuple[Endpoint, Endpoint]]:
        try:
            return {
                c.fd: (Endpoint(c.laddr.ip, c.laddr.port), Endpoint(c.raddr.ip, c.raddr.port))
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.laddr and c.raddr
            }
        except (psutil.Error, OSError):
            return {}
