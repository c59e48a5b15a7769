"""When a finished exchange goes on to the span builder: not always at once.

Three waits, each bounded: a server's answer waits for the connection's next
event (its retransmits show there); a client's exchange whose server is on
this node waits for the server's (the client span carries the server's split);
an exchange whose trace waits for a client's send to be reported waits for the
correlator to join them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from otel_ebpf.model import Exchange, Role, base_socket
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.correlate import MAX_UNSETTLED_NS, Correlator, RequestContext

ExchangeSink = Callable[[Exchange, Connection], None]

# A server's answer can be retransmitted after its last write: its span waits for
# the connection's next event (the ACK's effects show there) or this long.
ACK_HOLD_NS: Final = 1_000_000_000
# A client's exchange waits this long for its (quiet) server's.
SERVER_WAIT_NS: Final = 1_000_000_000
MAX_WAITING: Final = 16  # exchanges per connection in either wait; past it, the oldest go


class Delivery:
    def __init__(
        self,
        sink: ExchangeSink,
        correlator: Correlator,
        server_of: Callable[[Connection], Connection | None],
        read_retransmits: Callable[[int, int, int, int], int | None],
        fault: Callable[[Exception, int], None],
    ) -> None:
        self._sink = sink
        self._fault = fault  # what raised while ending a wait, and the socket it was for
        self._correlator = correlator
        self._server_of = server_of  # the server end of a client connection, if on this node
        self._read_retransmits = read_retransmits
        # Servers' answered exchanges waiting for their retransmits, by socket.
        self._acking: dict[int, tuple[Connection, list[Exchange], int]] = {}
        # Client exchanges waiting for their server's, by the server's socket.
        self._awaiting_server: dict[int, list[tuple[Exchange, Connection, int]]] = {}
        # Exchanges whose trace waits for a client's send to be reported.
        self._unsettled: list[tuple[Exchange, Connection]] = []
        self._joins_seen = 0

    def send(self, x: Exchange, conn: Connection) -> None:
        """A finished exchange: to the sink now, or once what it waits for came."""
        if isinstance(x.token, RequestContext):
            if conn.role == Role.CLIENT and self._wait_for_server(x, conn):
                return
            if conn.role == Role.SERVER and x.answered and not conn.closed_at:
                self._hold_until_acknowledged(x, conn)
                return
        self._deliver(x, conn)

    def answered(self, conn: Connection) -> None:
        """`conn` reported exchanges: if clients wait for it, its client has read
        the answer already, so nothing is left to retransmit."""
        if conn.sk in self._awaiting_server:
            self.acknowledged(conn.sk, self._kernel_retransmits(conn))
            self._release_clients(conn.sk)

    def moved_on(self, sk: int, retransmits: int) -> None:
        """An event of socket `sk`: its held answers go (cheap when none are held)."""
        if self._acking:
            self.acknowledged(sk, retransmits)

    def acknowledged(self, sk: int, retransmits: int | None) -> None:
        """The connection moved on (or the hold ran out): the answers' spans go, with
        the retransmits their bytes needed after the server's last write."""
        held = self._acking.pop(sk, None)
        if held is None:
            return
        conn, exchanges, _ = held
        if retransmits is not None:
            conn.retransmits = max(conn.retransmits, retransmits)
        for x in exchanges:
            rc = x.token
            if isinstance(rc, RequestContext) and rc.net is not None and rc.net_start:
                later = conn.retransmits - rc.net_start.retransmits
                if later > rc.net.retransmits:  # rarely: a copy only then
                    rc.net = rc.net.with_retransmits(later)
            self._deliver(x, conn)
        if sk in self._awaiting_server:
            self._release_clients(sk)

    def ended(self, conn: Connection) -> None:
        """`conn` is no longer tracked: nothing of it waits any more."""
        self.acknowledged(conn.sk, None)
        if conn.sk in self._awaiting_server:
            self._release_clients(conn.sk)

    def settle_joined(self) -> None:
        """Exchanges whose client's send was reported since go (cheap otherwise)."""
        if self._unsettled and self._correlator.joins != self._joins_seen:
            self._deliver_settled()

    def expire(self, now: int) -> None:
        """Waits that ran out end (call about once a second)."""
        if self._unsettled:
            try:
                self._deliver_settled(now)
            except Exception as exc:
                self._fault(exc, 0)
        for sk, (conn, _, held_at) in list(self._acking.items()):
            if now - held_at > ACK_HOLD_NS:
                try:
                    self.acknowledged(sk, self._kernel_retransmits(conn))
                except Exception as exc:
                    self._fault(exc, sk)
        for server_sk, waiting in list(self._awaiting_server.items()):
            if now - waiting[0][2] > SERVER_WAIT_NS:
                self._release_clients(server_sk)

    def flush(self) -> None:
        """Shutdown: everything waiting goes."""
        for sk in list(self._acking):
            self.acknowledged(sk, None)
        self._deliver_settled(1 << 62)
        for server_sk in list(self._awaiting_server):
            self._release_clients(server_sk)

    def _wait_for_server(self, x: Exchange, conn: Connection) -> bool:
        """A client's answer can be read before the kernel reports that its server
        sent it: when that server is on this node and still busy, the client's
        exchange waits for the server's (its span carries the server's split)."""
        server = self._server_of(conn)
        if server is None or server.closed_at:
            return False
        if server.sk in self._acking:
            # Its answer reached us, so the server's retransmits of it are done:
            # its span goes first, with them (read from the kernel now).
            self.acknowledged(server.sk, self._kernel_retransmits(server))
        if server.requests <= server.exchanges:
            return False  # it has nothing more to say
        waiting = self._awaiting_server.setdefault(server.sk, [])
        waiting.append((x, conn, x.end_ts))
        if len(waiting) > MAX_WAITING:  # the server went quiet: do not pile up
            self._release_clients(server.sk)
        return True

    def _hold_until_acknowledged(self, x: Exchange, conn: Connection) -> None:
        held = self._acking.get(conn.sk)
        if held is None:
            self._acking[conn.sk] = (conn, [x], x.end_ts)
        elif len(held[1]) < MAX_WAITING:
            held[1].append(x)
        else:
            self.acknowledged(conn.sk, None)
            self._hold_until_acknowledged(x, conn)

    def _deliver(self, x: Exchange, conn: Connection) -> None:
        """To the span builder: the request's trace is settled now, as late as can be
        (a client's send reported after its server's read still joins them)."""
        rc = x.token
        if isinstance(rc, RequestContext):
            if self._correlator.awaits_client(rc):
                self._unsettled.append((x, conn))
                return
            self._correlator.settle(rc)
        self._sink(x, conn)

    def _deliver_settled(self, now: int = 0) -> None:
        """Exchanges whose trace waited for a client's send: those joined since go;
        with `now`, so do those that waited too long (a trace of their own)."""
        self._joins_seen = self._correlator.joins
        waiting, self._unsettled = self._unsettled, []
        for x, conn in waiting:
            rc = x.token
            assert isinstance(rc, RequestContext)
            if self._correlator.awaits_client(rc) and now - x.end_ts < MAX_UNSETTLED_NS:
                self._unsettled.append((x, conn))
                continue
            self._correlator.settle(rc)
            self._sink(x, conn)

    def _kernel_retransmits(self, conn: Connection) -> int | None:
        """The connection's retransmits now, from the kernel (its socket's: a TLS
        stream's plaintext rides on it); the count of its last event while no
        retransmit happened anywhere since."""
        return self._read_retransmits(
            base_socket(conn.sk), conn.gen, conn.retransmits, conn.retransmit_stamp
        )

    def _release_clients(self, server_sk: int) -> None:
        for x, conn, _ in self._awaiting_server.pop(server_sk, []):
            self._deliver(x, conn)
