"""Kernel events in, exchanges out: the connection table and each connection's parser.

Keeps one `Connection` per kernel socket (address reuse told apart by its
generation), turns stream offsets into the parser's feed/skip calls, decides
a connection's role and protocol (processors.protocols.registry) and whether
it is traced at all, and tells the kernel which body bytes it need not send
(the `quiet` offsets). Its helpers, one job each: calls put back in order
(processors.reorder), the collector's own traffic (processors.own_traffic),
when a finished exchange goes on (processors.delivery).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final

from otel_ebpf.model import (
    NODE_CALLBACK,
    TLS_STREAM,
    ConnClose,
    ConnOpen,
    DataEvent,
    DatagramEvent,
    Declined,
    Direction,
    Endpoint,
    Exchange,
    KernelEvent,
    OtlpSender,
    RequestStarted,
    Role,
    SelfConn,
    base_socket,
)
from otel_ebpf.processes import ProcessInfo, ProcessRegistry
from otel_ebpf.processors.connections import (
    Connection,
    ProcSockets,
    ProtocolParser,
)
from otel_ebpf.processors.correlate import (
    Correlator,
    NetCounters,
    RequestContext,
    RequestNet,
    RequestStart,
    goroutine_key,
)
from otel_ebpf.processors.delivery import Delivery, ExchangeSink
from otel_ebpf.processors.own_traffic import OwnTraffic
from otel_ebpf.processors.protocols.dns import DnsQueries
from otel_ebpf.processors.protocols.registry import detect, guess_role, new_parser
from otel_ebpf.processors.reorder import Reorder
from otel_ebpf.processors.selection import Selector
from otel_ebpf.runtimes import GO
from otel_ebpf.telemetry import SelfTelemetry, fault_summary

log = logging.getLogger(__name__)

QuietSetter = Callable[[int, int, Direction, int], None]
# calls without a recognisable message before an old connection is ignored
UNDECIDED_LIMIT: Final = 8


# A connection closed with a request unanswered stays open to the bytes its owner
# reads after the close (an answer that came with the FIN or before a RST) this long.
LINGER_NS: Final = 1_000_000_000

QUIET_FOREVER: Final = (1 << 64) - 1
TLS_HANDSHAKE: Final = b"\x16\x03"  # a TLS record of type handshake, versions 3.x


def _thread_of(ev: DataEvent) -> int:
    """Whose work the call is, for in-process context: its thread, or in a probed Go
    program the goroutine it moved bytes for."""
    g = ev.goroutine
    return ev.tid if g is None else goroutine_key(ev.pid, g.owner)


class ConnectionTracker:
    """Dispatches kernel events to per-connection protocol parsers."""

    def __init__(
        self,
        sink: ExchangeSink,
        processes: ProcessRegistry,
        selector: Selector,
        telemetry: SelfTelemetry,
        set_quiet: QuietSetter | None = None,
        max_connections: int = 65536,
        quiet_threshold: int = 8192,
        is_sdk_process: Callable[[int], bool] | None = None,
        protocol_ports: dict[int, str] | None = None,
        dns_timeout_s: float = 5.0,
        on_unseen_tls: Callable[[int, bool], None] | None = None,
        read_retransmits: Callable[[int, int, int, int], int | None] | None = None,
    ) -> None:
        self._on_unseen_tls = on_unseen_tls  # (pid, sent it) of a TLS handshake seen in ciphertext
        # Also told of every exception the event path caught (tests, tools).
        self.on_fault: Callable[[Exception], None] | None = None
        self._processes = processes
        self._selector = selector
        self._telemetry = telemetry
        self._set_quiet = set_quiet
        self._conns: OrderedDict[int, Connection] = OrderedDict()
        self._max = max_connections
        self._quiet_threshold = quiet_threshold
        self._protocol_ports = protocol_ports or {}
        self._dns_timeout_ns = int(dns_timeout_s * 1e9)
        # UDP sockets with DNS queries in flight, per (pid, sock): nothing kept once answered.
        self._dns: OrderedDict[tuple[int, int], tuple[Connection, DnsQueries]] = OrderedDict()
        # Tuples (local, remote) of sockets the collector itself uses; a
        # connection with the mirrored tuple is its peer and is not traced.
        self._own = OwnTraffic()
        self._proc_sockets = ProcSockets()
        self.correlator = Correlator(
            max_streams=max_connections,
            is_sdk_process=is_sdk_process,
            moves_requests=lambda pid: processes.get(pid).runtime == GO,
        )
        self._by_ends: dict[tuple[Endpoint, Endpoint], Connection] = {}  # (local, remote)
        # Connections closed lately, by socket: (generation, role, local, remote).
        self._closed: OrderedDict[int, tuple[int, Role, Endpoint | None, Endpoint | None]] = (
            OrderedDict()
        )
        # Whose ends closed lately (local, remote) -> (process, pid): a peer's close
        # can be read before this end's last exchange is built, which names it.
        self._closed_ends: OrderedDict[
            tuple[Endpoint, Endpoint], tuple[ProcessInfo | None, int]
        ] = OrderedDict()
        self._lingering: dict[int, Connection] = {}  # closed, an answer may still be read
        # Who accepted connections where, by local end (the kernel's client counts
        # name their peer by address): the latest 4,096 ends.
        self._serving: OrderedDict[Endpoint, int] = OrderedDict()
        self._delivery = Delivery(
            sink,
            self.correlator,
            self._server_of,
            read_retransmits or (lambda _sk, _gen, _known, _stamp: None),
            self._fault,
        )
        self._reorder = Reorder(
            self._on_data,
            lambda conn: self._conns.get(conn.sk) is conn and bool(conn.selected),
            self._fault,
            telemetry,
        )

    def service_at(self, local: Endpoint, remote: Endpoint) -> str | None:
        """The service of the process at the other end of (local, remote), if on this
        node: named at its first traced call, else by its open (the span budget may
        have shed every request it made so far: the kernel sent none of its calls),
        also when its close was read first."""
        peer = self._by_ends.get((remote, local))
        if peer is not None:
            process, pid = peer.process, peer.pid
        else:  # closed already (its close read first), or not on this node
            closed = self._closed_ends.get((remote, local))
            if closed is None:
                return None
            process, pid = closed
        if process is not None:
            return process.service_name
        opener = self._processes.get(pid) if pid else None
        return opener.service_name if opener is not None and opener.executable_name else None

    def traced(self, pid: int, server_port: int) -> bool:
        """Whether a connection of `pid` to or on `server_port` would be traced."""
        process = self._processes.get(pid)
        return self._selector.process_selected(
            pid, process.executable_name
        ) and self._selector.port_selected(server_port)

    def service_serving(self, end: Endpoint) -> str | None:
        """The service of the process on this node that accepted connections at `end`."""
        pid = self._serving.get(end)
        return self._processes.get(pid).service_name if pid else None

    def _note_serving(self, end: Endpoint, pid: int) -> None:
        self._serving[end] = pid
        self._serving.move_to_end(end)
        if len(self._serving) > 4096:
            self._serving.popitem(last=False)

    def recently_closed(self, sk: int) -> tuple[Role, Endpoint | None, Endpoint | None] | None:
        """Role and ends of a connection that closed lately (an abortive close's RST)."""
        closed = self._closed.get(sk)
        return closed[1:] if closed else None

    def ends(self, sk: int, gen: int) -> tuple[Role, Endpoint | None, Endpoint | None] | None:
        """Role and ends of a live connection the kernel knows as (sk, generation)."""
        conn = self._conns.get(sk) or self._conns.get(sk | TLS_STREAM)
        if conn is None or conn.gen not in (0, gen) or conn.remote is None:
            return None
        return conn.role, conn.local, conn.remote

    def _forget_ends(self, conn: Connection) -> None:
        if conn.local and conn.remote and self._by_ends.get((conn.local, conn.remote)) is conn:
            ends = (conn.local, conn.remote)
            del self._by_ends[ends]
            self._closed_ends[ends] = (conn.process, conn.pid)
            if len(self._closed_ends) > 4096:
                self._closed_ends.popitem(last=False)

    def add_own_listener(self, port: int) -> None:
        """Connections accepted on this port are the collector's: never trace their clients."""
        self._own.add_listener(port)

    def pid_of_peer(self, sender: OtlpSender) -> int | None:
        """The process behind a connection to one of our listeners (OTLP in)."""
        return self._own.pid_of_peer(sender)

    def mark_own_connections(self) -> None:
        """Exclude the peers of the collector's current connections (call once attached)."""
        self._own.mark_current()

    def __len__(self) -> int:
        return len(self._conns)

    def handle(self, event: KernelEvent) -> None:
        """One kernel event. Nothing raised below (a parser, a span builder, an
        exporter's hand-off) escapes: it ends that connection's parsing, counted."""
        try:
            if type(event) is DataEvent:
                self._delivery.moved_on(event.sk, event.retransmits)
                self._on_data(event)
                if self._lingering:
                    self._end_if_answered(event.sk)
            elif type(event) is DatagramEvent:
                self._on_datagram(event)
            elif type(event) is ConnOpen:
                self._on_open(event)
            elif type(event) is ConnClose:
                self._on_close(event)
            elif type(event) is SelfConn:
                self._on_self(event)
            self._delivery.settle_joined()
        except Exception as exc:
            self._fault(exc, getattr(event, "sk", 0), getattr(event, "pid", 0))

    def _fault(self, exc: Exception, sk: int, pid: int = 0) -> None:
        """Stop parsing the connection whose event raised: its parser's state is
        no longer to be trusted. Counted, and said once (debug): the bytes are
        someone else's, a log line per event would be theirs to flood."""
        if self.on_fault is not None:
            self.on_fault(exc)
        entry = self._dns.pop((pid, sk), None)
        conn = self._conns.get(sk) or (entry[0] if entry else None)
        if not isinstance(exc, Declined):
            self._telemetry.parse_errors += 1
        if conn is None or conn.selected is False:
            return
        log.debug(
            "%s[%d] %s -> %s (%s): %s; not parsing this connection any more",
            conn.process.executable_name if conn.process else "?",
            conn.pid,
            conn.local,
            conn.remote,
            conn.proto_name,
            exc if isinstance(exc, Declined) else fault_summary(exc),
        )
        self._telemetry.connections_declined += 1
        conn.selected = False
        self._drop_parser(conn)
        self._reorder.drop(conn)
        self._silence(conn)

    def close_all(self, ts: int) -> None:
        """Shutdown: emit what completed; requests still awaiting a response are
        counted, not reported as failures (it is we who stop watching)."""
        for conn in list(self._conns.values()):
            try:
                self._finish(conn, ts, at_exit=True)
            except Exception as exc:
                self._fault(exc, conn.sk)
        self._conns.clear()
        self._lingering.clear()
        self._delivery.flush()  # no more waiting: every span goes
        self.expire(ts)
        for _, queries in self._dns.values():
            self._telemetry.requests_pending_at_exit += len(queries)
        self._dns.clear()

    def expire(self, now: int) -> None:
        """Report DNS queries that waited longer than the timeout, and end closed
        connections whose late answer did not come (call about once a second)."""
        self._delivery.expire(now)
        for conn in list(self._lingering.values()):
            if now - conn.closed_at > LINGER_NS:
                try:
                    self._end(conn, 0)
                except Exception as exc:
                    self._fault(exc, conn.sk)
        for key, (conn, queries) in list(self._dns.items()):
            try:
                timed_out = queries.expire(now, self._dns_timeout_ns)
                self._telemetry.requests_unanswered += len(timed_out)
                self._emit(timed_out, conn)
            except Exception as exc:
                self._fault(exc, *reversed(key))
                continue
            if not queries:
                del self._dns[key]

    def _on_datagram(self, ev: DatagramEvent) -> None:
        """A DNS message over UDP: queries open a pairing, answers close it."""
        key = (ev.pid, ev.sk)
        entry = self._dns.get(key)
        if entry is None:
            if ev.direction != Direction.EGRESS:
                return  # an answer to nothing we saw asked
            entry = self._dns_socket(ev)
            if len(self._dns) >= self._max:
                _, (old_conn, old) = self._dns.popitem(last=False)
                self._telemetry.connections_evicted += 1
                self._emit(old.close(ev.ts), old_conn)
            self._dns[key] = entry
        conn, queries = entry
        if not conn.selected:
            return
        out = queries.message(ev.payload, ev.ts, outgoing=ev.direction == Direction.EGRESS)
        self._begin_requests(out, conn, ev)
        if queries.parse_errors:
            self._telemetry.parse_errors += queries.parse_errors
            queries.parse_errors = 0
        if queries.abandoned:
            self._abandon(conn, queries.abandoned)
        self._emit(out, conn)
        if not queries:
            del self._dns[key]

    def _dns_socket(self, ev: DatagramEvent) -> tuple[Connection, DnsQueries]:
        conn = Connection(ev.sk, Role.CLIENT)
        conn.pid, conn.remote, conn.ipv6 = ev.pid, ev.peer, ev.ipv6
        conn.process = self._processes.get(ev.pid, ev.comm)
        conn.proto_name = "dns"
        conn.selected = self._selector.process_selected(ev.pid, conn.process.executable_name)
        if not conn.selected:
            self._telemetry.connections_excluded += 1
        return conn, DnsQueries("udp")

    # -- events ---------------------------------------------------------------

    def _connection(self, sk: int, role: Role) -> Connection:
        conn = self._conns.get(sk)
        if conn is None:
            if len(self._conns) >= self._max:
                old = next(iter(self._conns.values()))
                self._telemetry.connections_evicted += 1
                self._end(old, 0)
            conn = self._conns[sk] = Connection(sk, role)
            self._telemetry.connections_tracked += 1
            if sk & TLS_STREAM:
                self._tls_from_socket(conn)
        return conn

    def _tls_from_socket(self, conn: Connection) -> None:
        """A plaintext stream takes its ends from its socket, when the open was seen
        (else from /proc at its first event, as any connection that predates us)."""
        base = self._conns.get(base_socket(conn.sk))
        if base is not None and base.local is not None and base.remote is not None:
            conn.local, conn.remote, conn.ipv6 = base.local, base.remote, base.ipv6
            conn.seen_from_start = base.seen_from_start
            if conn.seen_from_start:
                conn.stream_pos = [0, 0]  # the first plaintext byte after the handshake
            self._by_ends[(base.local, base.remote)] = conn  # the end that knows its process

    def _on_open(self, ev: ConnOpen) -> None:
        old = self._conns.get(ev.sk)
        if old is not None:  # the address was reused: its close was lost, or it lingered
            self._end(old, ev.ts)
        if self._own.opened(ev):
            return
        conn = self._connection(ev.sk, ev.role)
        conn.local, conn.remote, conn.ipv6 = ev.local, ev.remote, ev.ipv6
        self._by_ends[(ev.local, ev.remote)] = conn
        if ev.role == Role.SERVER and ev.pid:
            self._note_serving(ev.local, ev.pid)
        conn.seen_from_start = True
        conn.stream_pos = [0, 0]  # both streams start at the handshake
        conn.pid = ev.pid
        if ev.pid:  # a client, named now while it surely runs: a short one exits fast
            self._processes.prefetch(ev.pid)

    def _on_self(self, ev: SelfConn) -> None:
        conn = self._conns.pop(ev.sk, None)
        ends = None  # connected before the probes were attached: /proc tells
        if conn is not None and conn.local is not None and conn.remote is not None:
            ends = (conn.local, conn.remote)
        self._own.seen_using(ev.sk, ends)

    def _on_close(self, ev: ConnClose) -> None:
        if self._own.forget(ev.sk):
            return
        plaintext = None if ev.sk & TLS_STREAM else self._conns.get(ev.sk | TLS_STREAM)
        if plaintext is not None:  # the TLS stream ends with its socket
            self._on_close(ev._replace(sk=ev.sk | TLS_STREAM))
        conn = self._conns.get(ev.sk)
        if conn is not None and conn.held:
            self._reorder.release(conn)  # calls still waiting come before the close
        conn = self._conns.get(ev.sk)
        if conn is None or conn.closed_at:
            return
        self._delivery.acknowledged(ev.sk, ev.retransmits)
        conn.reset = bool(ev.resets_in or ev.resets_out)
        conn.retransmits = max(conn.retransmits, ev.retransmits)
        conn.gen = conn.gen or ev.opened
        self._closed[ev.sk] = (conn.gen, conn.role, conn.local, conn.remote)
        if len(self._closed) > 1024:
            self._closed.popitem(last=False)
        conn.closed_at = ev.ts
        if conn.proto is not None and conn.requests > conn.exchanges and not conn.reset:
            # Its owner may still read the answer: the kernel closes a socket when
            # the FINs are done, maybe before the app reads. (After a RST, say it
            # at once: whoever waited on this call is answering its own caller.)
            self._lingering[ev.sk] = conn
            return
        self._end(conn, ev.ts)

    def _end_if_answered(self, sk: int) -> None:
        conn = self._lingering.get(sk)
        if conn is not None and conn.requests <= conn.exchanges:
            self._end(conn, 0)

    def _end(self, conn: Connection, ts: int) -> None:
        """Stop tracking a connection (closed, evicted, or its address has a new
        owner): its unanswered requests are reported as of its close, if seen."""
        self._lingering.pop(conn.sk, None)
        if self._conns.get(conn.sk) is conn:
            del self._conns[conn.sk]
        self._forget_ends(conn)
        self._delivery.acknowledged(conn.sk, None)
        self._finish(conn, conn.closed_at or ts)
        self._delivery.ended(conn)

    def _finish(self, conn: Connection, ts: int, at_exit: bool = False) -> None:
        if conn.proto is None:
            return
        exchanges = conn.proto.close(ts)
        self._telemetry.parse_errors += conn.proto.parse_errors
        conn.proto.parse_errors = 0
        done = []
        for x in exchanges:
            if not x.answered:
                if at_exit:
                    self._telemetry.requests_pending_at_exit += 1
                    continue
                self._telemetry.requests_unanswered += 1
                if ts > x.end_ts:  # it waited until the connection ended (or was reset)
                    x = x._replace(end_ts=ts)
            done.append(x)
        self._emit(done, conn)
        self._drop_parser(conn)

    def _on_data(self, ev: DataEvent) -> None:
        if base_socket(ev.sk) in self._own:
            return
        conn = self._conns.get(ev.sk)
        if conn is None:
            closed = self._closed.get(ev.sk)
            if closed is not None and closed[0] == ev.gen:
                return  # read after the close of a connection already reported
            conn = self._connection(ev.sk, ev.role)
            conn.gen = ev.gen
        elif conn.gen != ev.gen:
            if conn.gen:  # the address was reused and we missed the close
                self._end(conn, ev.ts)
                conn = self._connection(ev.sk, ev.role)
            conn.gen = ev.gen
        if conn.selected is False:
            return
        if not self._reorder.admit(conn, ev):
            return
        if conn.selected is None and not self._decide(conn, ev):
            return
        if not conn.selected:
            return
        d = ev.direction
        expected = conn.stream_pos[d]
        if expected is None:
            expected = ev.cap_offset
        conn.retransmits, conn.srtt_us = ev.retransmits, ev.srtt_us
        conn.retransmit_stamp = ev.retransmit_stamp
        conn.fd = conn.fd or ev.fd
        conn.send_wait_ns, conn.window_small = ev.send_wait_ns, ev.window_small
        if d == Direction.EGRESS:
            conn.writer_tid = _thread_of(ev)
            if ev.task & NODE_CALLBACK:
                conn.writer_cause = conn.writer_cause or ev.task_cause
            else:
                conn.writer_task = ev.task or conn.writer_task
        elif conn.role == Role.SERVER:
            conn.writer_task = conn.writer_cause = 0  # who answers it is not known yet
        if ev.red_counted:
            conn.red_next = True
        is_request = (d == Direction.EGRESS) == (conn.role == Role.CLIENT)
        http = conn.proto
        assert http is not None  # selected connections have a parser
        out: list[Exchange | RequestStarted] = []
        gap = ev.cap_offset - expected
        if gap > 0:
            out += (http.skip_shed if ev.after_shed else http.skip)(is_request, gap, ev.ts)
        end = ev.offset + ev.length
        if ev.payload:
            out += http.feed(is_request, ev.payload, ev.ts)
            tail = end - (ev.cap_offset + len(ev.payload))
        else:
            tail = end - max(ev.cap_offset, expected)
        if tail > 0:
            out += http.skip(is_request, tail, ev.ts)
        if out:
            self._begin_requests(out, conn, ev)  # where the stream stood when they began
        conn.stream_pos[d] = end
        if conn.seen_from_start and ev.offset == 0 and http.not_protocol(is_request):
            self._fall_back(conn, ev)
            return
        if self._set_quiet is not None:
            ahead = http.skippable(is_request)
            if ahead > self._quiet_threshold and conn.quiet[d] < end + ahead:
                conn.quiet[d] = end + ahead
                self._set_quiet(conn.sk, conn.gen, d, end + ahead)
        if http.parse_errors:
            self._telemetry.parse_errors += http.parse_errors
            http.parse_errors = 0
            log.debug(  # never the bytes themselves: they may hold secrets
                "parse error on %s %s at offset %d",
                conn.process and conn.process.executable_name,
                d.name,
                ev.offset,
            )
        if http.abandoned:
            self._abandon(conn, http.abandoned)
        self._emit(out, conn)
        self._reorder.fed(conn)

    def release_held(self) -> None:
        """End of a ring-buffer drain: calls still waiting go on, gaps and all."""
        self._reorder.release_all()

    def _parser_for(
        self, conn: Connection, ev: DataEvent, tried: tuple[str, ...] = ()
    ) -> ProtocolParser | None:
        """The parser for what the first bytes (or the port, or the operator) say."""
        is_request = (ev.direction == Direction.EGRESS) == (conn.role == Role.CLIENT)
        name = detect(
            ev.payload if is_request else b"",
            b"" if is_request else ev.payload,
            conn.server_port,
            self._protocol_ports,
            tried,
        )
        conn.proto_name = name or ""
        return new_parser(name) if name else None

    def _fall_back(self, conn: Connection, ev: DataEvent) -> None:
        """The first bytes were not what we guessed: try the next candidate on them."""
        conn.protos_tried += (conn.proto_name,)
        proto = self._parser_for(conn, ev, conn.protos_tried)
        if proto is None:
            self._ignore(conn, ev)
            return
        conn.proto = proto
        conn.stream_pos = [None, None]
        self._on_data(ev)

    def _begin_requests(
        self, out: Sequence[object], conn: Connection, ev: DataEvent | DatagramEvent
    ) -> None:
        """The requests a parser saw start in the call `ev` get their context (and
        their exchanges, when they end, carry it)."""
        for started in out:
            if type(started) is RequestStarted:
                started.context = self._request_started(conn, started.head, ev)

    def _request_started(
        self, conn: Connection, head: RequestStart, ev: DataEvent | DatagramEvent
    ) -> RequestContext:
        local, remote = conn.local, conn.remote
        client_on_node = (
            conn.role == Role.SERVER
            and local is not None
            and remote is not None
            and (remote, local) in self._by_ends
        )
        rand = threshold = 0
        thread, goroutine, task, caused_by = ev.tid, None, 0, None
        if type(ev) is DataEvent:
            if conn.red_next:  # noted in the kernel, kept by its budget
                rand, threshold = ev.rand, ev.threshold
            thread, goroutine = _thread_of(ev), ev.goroutine
            if ev.task & NODE_CALLBACK:
                caused_by = self._request_read_by(ev.task_cause)
            else:
                task = ev.task
        rc = self.correlator.started(
            conn.role,
            head,
            ev.pid,
            thread,
            local,
            remote,
            conn.seen_from_start,
            client_on_node,
            rand,
            threshold,
            goroutine,
            task,
            caused_by,
        )
        if type(ev) is DataEvent:
            sent, received = (p or 0 for p in conn.stream_pos)
            rc.net_start = NetCounters(
                conn.retransmits,
                sent,
                received,
                conn.seen_from_start and conn.requests == 0,
                ev.send_wait_ns,
                conn.window_small,
            )
            rc.red_in_kernel, conn.red_next = conn.red_next, False
        conn.requests += 1
        conn.in_flight[rc] = None
        return rc

    def _request_read_by(self, sk: int) -> RequestContext | None:
        """The server request whose read began a Node callback (read on socket
        `sk`): the one request in flight on that server connection, if so."""
        conn = self._conns.get(sk) if sk else None
        if conn is None or conn.role != Role.SERVER or len(conn.in_flight) != 1:
            return None
        return next(iter(conn.in_flight))

    def _response_read_by(self, sk: int) -> RequestContext | None:
        """The client request whose response's read began a Node callback."""
        conn = self._conns.get(sk) if sk else None
        if conn is None or conn.role != Role.CLIENT:
            return None
        done = conn.last_done
        return done if isinstance(done, RequestContext) else None

    def _drop_parser(self, conn: Connection) -> None:
        """No more exchanges will come from this connection: requests it started and
        never reported end here, or their threads would seem busy with them until
        they expire, and a new thread given the same id would find them there."""
        conn.proto = None
        for rc in conn.in_flight:
            self.correlator.ended(rc)
        conn.in_flight.clear()

    def _abandon(self, conn: Connection, tokens: list[Any]) -> None:
        """Requests a parser gave up on (more in flight on one connection than it
        keeps): they end here, counted, so no thread seems to serve them still."""
        self._telemetry.requests_dropped += len(tokens)
        for started in tokens:
            rc = started.context
            if isinstance(rc, RequestContext):
                self.correlator.ended(rc)
                conn.in_flight.pop(rc, None)
        tokens.clear()

    def _emit(self, out: Sequence[Exchange | RequestStarted], conn: Connection) -> None:
        """Exchanges a parser ended go on, each with its request's context as its
        token (the RequestStarted records among them were handled at their call)."""
        if not out:
            return
        exchanges: list[Exchange] = []
        for x in out:
            if isinstance(x, RequestStarted):
                continue
            token = x.token  # once: an exchange of any protocol is read by name
            if isinstance(token, RequestStarted):
                x = x._replace(token=token.context)
            exchanges.append(x)
        conn.exchanges += len(exchanges)
        # the thread whose write completed a server's answers
        answer_by = conn.writer_tid if conn.role == Role.SERVER and conn.writer_tid else None
        after = self._response_read_by(conn.writer_cause) if answer_by is not None else None
        for x in exchanges:
            rc = x.token
            if isinstance(rc, RequestContext):
                if answer_by is not None:
                    self.correlator.answered(rc, answer_by, conn.writer_task, conn.sk, after)
                elif conn.role == Role.CLIENT:
                    conn.last_done = rc
                self._net_facts(rc, conn)
                self.correlator.ended(rc)
                conn.in_flight.pop(rc, None)
            self._delivery.send(x, conn)
        if exchanges:
            self._delivery.answered(conn)

    def _server_of(self, conn: Connection) -> Connection | None:
        """The server end of a client connection, when it is on this node."""
        if conn.local is None or conn.remote is None:
            return None
        return self._by_ends.get((conn.remote, conn.local))

    @staticmethod
    def _net_facts(rc: RequestContext, conn: Connection) -> None:
        """What TCP did between the request's start and now (its end)."""
        if rc.net_start is None:
            return
        start = rc.net_start
        sent_now, received_now = (p or 0 for p in conn.stream_pos)
        rc.net = RequestNet(
            max(conn.retransmits - start.retransmits, 0),
            max(sent_now - start.sent, 0),
            max(received_now - start.received, 0),
            conn.srtt_us,
            start.new_connection,
            conn.reset,
            max(conn.send_wait_ns - start.send_wait_ns, 0),
            max(conn.window_small - start.window_small, 0),
        )

    def _ignore(self, conn: Connection, ev: DataEvent) -> None:
        """No supported protocol from its first bytes, `ev`'s (TLS, HTTP/2, a database
        not parsed yet): the kernel counts its bytes from now on and sends no events.
        TLS here means a TLS library the uprobes do not cover, or a TLS client at
        a plain-text port: say which (receivers/tls.py)."""
        if ev.payload[:2] == TLS_HANDSHAKE and self._on_unseen_tls is not None:
            self._on_unseen_tls(conn.pid, ev.direction == Direction.EGRESS)
        conn.selected = False
        self._drop_parser(conn)
        self._telemetry.connections_unrecognised += 1
        self._silence(conn)

    def _silence(self, conn: Connection) -> None:
        if self._set_quiet is not None:
            for d in (Direction.EGRESS, Direction.INGRESS):
                self._set_quiet(conn.sk, conn.gen, d, QUIET_FOREVER)

    def _ends_from_proc(self, conn: Connection, ev: DataEvent) -> None:
        ends = self._proc_sockets.lookup(ev.pid, ev.fd) if ev.fd else None
        if ends:
            conn.local, conn.remote = ends
            conn.ipv6 = ":" in ends[0].address
            self._by_ends[ends] = conn

    def _decide(self, conn: Connection, ev: DataEvent) -> bool:
        """First data on a connection: who owns it, which side it is, trace it or not."""
        if conn.role == Role.UNKNOWN:
            # Opened before we started: take the role from what the bytes say,
            # else from which end has a database's well-known port.
            if conn.local is None:
                self._ends_from_proc(conn, ev)
            role = guess_role(
                ev.payload,
                ev.direction == Direction.EGRESS,
                conn.local.port if conn.local else 0,
                conn.remote.port if conn.remote else 0,
                self._protocol_ports,
            )
            if role is None:
                conn.undecided += 1
                if conn.undecided >= UNDECIDED_LIMIT:
                    # Calls of a connection that predates us keep saying nothing we
                    # parse (TLS, HTTP/2, a database): stop the kernel sending them.
                    conn.selected = False
                    self._telemetry.connections_unrecognised += 1
                    self._silence(conn)
                return False  # wait for bytes that tell
            conn.role = role
        conn.pid = ev.pid
        if conn.local is None:
            self._ends_from_proc(conn, ev)
        if conn.role == Role.SERVER and conn.local is not None:
            self._note_serving(conn.local, ev.pid)
        process = self._processes.get(ev.pid, ev.comm)
        conn.process = process
        own_peer = self._own.is_peer(conn.local, conn.remote, conn.seen_from_start)
        conn.selected = (
            not own_peer
            and self._selector.process_selected(ev.pid, process.executable_name)
            and self._selector.port_selected(conn.server_port)
        )
        if conn.selected:
            conn.proto = self._parser_for(conn, ev)
            if conn.proto is None:
                self._ignore(conn, ev)
                return False
        else:
            self._telemetry.connections_excluded += 1
            log.debug(
                "not tracing %s %s -> %s (own peer: %s)",
                process.executable_name,
                conn.local,
                conn.remote,
                own_peer,
            )
            self._silence(conn)  # not traced: the kernel only counts its bytes from now on
        return True
