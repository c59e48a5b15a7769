"""Where a request's time went: the phase arithmetic, then the same rules on
recorded kernel event sequences through the tracker and the span builder."""

from __future__ import annotations

from pathlib import Path

from records import traced

from otel_ebpf.model import ConnOpen, DataEvent, Direction, Endpoint, Role
from otel_ebpf.processors.delivery import ACK_HOLD_NS
from otel_ebpf.processors.phases import (
    DOWNSTREAM,
    FLOW_CONTROL,
    NETWORK,
    SERVER,
    STALL,
    PeerSplit,
    Timing,
    split,
)
from otel_ebpf.processors.streams import ConnectionTracker

MS = 1_000_000
US = 1_000


def test_a_slow_handler_is_the_server() -> None:
    s = split(Timing(True, 0, 100 * US, 300 * MS, 301 * MS, request_bytes=200))
    assert s.verdict == SERVER
    assert s.server == 301 * MS - 100 * US and s.network == 100 * US
    assert (s.request, s.wait, s.response) == (100 * US, 300 * MS - 100 * US, 1 * MS)


def test_a_body_held_behind_a_delayed_ack_is_a_stall_not_the_server() -> None:
    # head read at 0, its 20-byte body 40 ms later, answered 0.2 ms after that
    s = split(Timing(True, 0, 40 * MS, 40 * MS + 200 * US, 40 * MS + 250 * US, 170, rtt=50 * US))
    assert s.verdict == STALL and s.stall_ns == 40 * MS
    assert s.network == 40 * MS and s.server == 250 * US


def test_a_large_request_that_is_slow_to_arrive_is_the_network_not_a_stall() -> None:
    s = split(Timing(True, 0, 2_000 * MS, 2_001 * MS, 2_002 * MS, request_bytes=4_000_000))
    assert s.verdict == NETWORK and s.stall is None


def test_a_gap_explained_by_the_round_trip_is_no_stall() -> None:
    s = split(Timing(True, 0, 60 * MS, 61 * MS, 62 * MS, request_bytes=300, rtt=30 * MS))
    assert s.stall is None and s.verdict == NETWORK


def test_sends_that_waited_for_buffer_room_are_the_network() -> None:
    # nginx sending 2 MiB over a slow link: 2.9 s of 3 s waiting for room to send
    s = split(Timing(True, 0, 1 * MS, 2 * MS, 3_000 * MS, 300, send_wait=2_900 * MS))
    assert s.verdict == NETWORK
    assert s.network == 2_901 * MS and s.server == 99 * MS


def test_a_nearly_shut_window_names_flow_control() -> None:
    s = split(Timing(True, 0, 5_000 * MS, 5_001 * MS, 5_002 * MS, 1 << 20, window_small=120))
    assert s.verdict == FLOW_CONTROL


def test_time_spent_in_its_own_calls_is_downstream() -> None:
    # a proxy whose backend held the request 100 ms, then reset it
    s = split(Timing(True, 0, 50 * US, 101 * MS, 102 * MS, 200, downstream=100 * MS))
    assert s.verdict == DOWNSTREAM and s.downstream == 100 * MS
    assert s.server == 102 * MS - 50 * US - 100 * MS


def test_an_unanswered_request_waits_until_the_end() -> None:
    s = split(Timing(True, 0, 10 * US, None, 100 * MS, 200))
    assert (s.wait, s.response) == (100 * MS - 10 * US, 0)
    assert s.verdict == SERVER


def test_a_client_takes_its_servers_split_when_the_server_is_on_this_node() -> None:
    peer = PeerSplit(handling=200 * US, stall=STALL, stall_ns=40 * MS, window_small=0)
    s = split(Timing(False, 0, 10 * US, 41 * MS, 41 * MS + 100 * US, 170), peer)
    assert not s.estimated and s.server == 200 * US
    assert s.verdict == STALL and s.network == 41 * MS + 100 * US - 200 * US


def test_a_client_alone_estimates_the_server_from_the_round_trip() -> None:
    s = split(Timing(False, 0, 10 * US, 80 * MS, 81 * MS, 170, rtt=30 * MS))
    assert s.estimated and s.server == 80 * MS - 10 * US - 30 * MS
    assert s.network == 81 * MS - s.server and s.verdict == SERVER


def test_timestamps_out_of_order_never_make_negative_times() -> None:
    s = split(Timing(True, 100, 50, 20, 10, 10))
    assert min(s.request, s.wait, s.response, s.server, s.network, s.downstream) >= 0


# The same rules on kernel events, as the ring buffer delivers them.

SERVER_END, CLIENT_END = Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.1", 40000)


class Side:
    """One side of a loopback connection, its calls numbered as the kernel would."""

    def __init__(self, t: ConnectionTracker, sk: int, role: Role) -> None:
        self.t, self.sk, self.role = t, sk, role
        self.pos = [0, 0]
        local, remote = (
            (SERVER_END, CLIENT_END) if role == Role.SERVER else (CLIENT_END, SERVER_END)
        )
        t.handle(ConnOpen(sk, 1, role, 10 + sk, local, remote, False))

    def call(self, d: Direction, data: bytes, ts: int, send_wait: int = 0) -> None:
        off = self.pos[d]
        self.pos[d] += len(data)
        pid = 10 + self.sk
        ev = DataEvent(self.sk, 1, d, self.role, pid, pid, 3, ts, off, len(data), off, data, b"app")
        self.t.handle(ev.replace(srtt_us=40, send_wait_ns=send_wait))


def test_a_delayed_ack_stall_on_recorded_events(tmp_path: Path) -> None:
    """The client writes head and body apart; the body comes 40 ms late."""
    t, spans = traced(tmp_path)
    client, server = Side(t, 1, Role.CLIENT), Side(t, 2, Role.SERVER)
    head = b"POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n"
    body, answer = b"x" * 20, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    client.call(Direction.EGRESS, head, 0)
    client.call(Direction.EGRESS, body, 10 * US)
    server.call(Direction.INGRESS, head, 30 * US)
    server.call(Direction.INGRESS, body, 40 * MS + 30 * US)
    server.call(Direction.EGRESS, answer, 40 * MS + 230 * US)
    client.call(Direction.INGRESS, answer, 40 * MS + 300 * US)
    t.release_held()
    by_kind = {s.kind.name: s.attributes for s in spans}
    srv, cli = by_kind["SERVER"], by_kind["CLIENT"]
    assert srv["otel_ebpf.verdict"] == cli["otel_ebpf.verdict"] == STALL
    assert srv["otel_ebpf.tcp.stall.time"] == 0.04
    assert round(srv["otel_ebpf.time.server"], 6) == 0.0002
    assert cli["otel_ebpf.time.server"] == srv["otel_ebpf.time.server"]
    assert "otel_ebpf.time.estimated" not in cli


def test_a_client_answer_reported_before_its_servers_send_still_gets_the_exact_split(
    tmp_path: Path,
) -> None:
    """The kernel reports a send once delivered: the client may read first."""
    t, spans = traced(tmp_path)
    client, server = Side(t, 1, Role.CLIENT), Side(t, 2, Role.SERVER)
    request = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    client.call(Direction.EGRESS, request, 0)
    server.call(Direction.INGRESS, request, 20 * US)
    client.call(Direction.INGRESS, answer, 300 * MS + 60 * US)  # before the server's send
    assert spans == []  # the client's exchange waits for its server's
    server.call(Direction.EGRESS, answer, 300 * MS)
    t.release_held()
    assert [s.kind.name for s in spans] == ["SERVER", "CLIENT"]
    cli = spans[1].attributes
    assert cli["otel_ebpf.verdict"] == SERVER and "otel_ebpf.time.estimated" not in cli


def test_a_send_that_waited_for_room_is_the_network_on_recorded_events(tmp_path: Path) -> None:
    t, spans = traced(tmp_path)
    server = Side(t, 2, Role.SERVER)
    server.call(Direction.INGRESS, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n", 0)
    server.call(Direction.EGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", 1 * MS)
    # the body's last send began after 2.9 s of waiting for room in the buffer
    server.call(Direction.EGRESS, b"data", 3_000 * MS, send_wait=2_900 * MS)
    assert spans == []  # until the answer is acknowledged: the next event, or a while
    t.expire(3_000 * MS + ACK_HOLD_NS + 1)
    (span,) = spans
    attrs = span.attributes
    assert attrs["otel_ebpf.verdict"] == NETWORK
    assert attrs["otel_ebpf.tcp.send_wait"] == 2.9
    assert round(attrs["otel_ebpf.time.server"], 3) == 0.1
