"""Connection tracking on synthetic kernel events: ordering, detection, fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from otel_ebpf.model import ConnClose, ConnOpen, DataEvent, Direction, Endpoint, HttpExchange, Role
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.protocols.sql import SqlExchange
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.streams import LINGER_NS, Connection, ConnectionTracker
from otel_ebpf.telemetry import SelfTelemetry

CLIENT = Endpoint("10.0.0.1", 40000)


def tracker(tmp_path: Path, **kwargs: Any) -> tuple[ConnectionTracker, list[Any]]:
    out: list[Any] = []
    t = ConnectionTracker(
        lambda x, conn: out.append((x, conn)),
        ProcessRegistry(proc=str(tmp_path)),  # no such processes: names from comm
        Selector(),
        SelfTelemetry(),
        **kwargs,
    )
    return t, out


class Stream:
    """Calls of one connection, with the offsets the kernel would give them."""

    def __init__(self, t: ConnectionTracker, server_port: int, sk: int = 7) -> None:
        self.t, self.sk = t, sk
        self.pos = [0, 0]
        t.handle(ConnOpen(sk, 1, Role.CLIENT, 99, CLIENT, Endpoint("10.0.0.2", server_port), False))

    def event(self, d: Direction, data: bytes, ts: int) -> DataEvent:
        off = self.pos[d]
        self.pos[d] += len(data)
        return DataEvent(
            self.sk, 1, d, Role.CLIENT, 99, 99, 3, ts, off, len(data), off, data, b"app"
        )


def test_calls_reordered_across_threads_are_parsed_in_stream_order(tmp_path: Path) -> None:
    t, out = tracker(tmp_path)
    s = Stream(t, 8080)
    first = s.event(Direction.EGRESS, b"GET /a HTTP/1.1\r\nHost: x\r\n", 1)
    second = s.event(Direction.EGRESS, b"Content-Length: 0\r\n\r\n", 2)
    response = s.event(Direction.INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    for ev in (second, first, response):  # the second call reported first
        t.handle(ev)
    t.release_held()
    ((x, _),) = out
    assert isinstance(x, HttpExchange) and x.request.target == "/a" and x.response is not None


def test_a_gap_that_never_fills_is_skipped_at_the_end_of_the_poll(tmp_path: Path) -> None:
    t, out = tracker(tmp_path)
    s = Stream(t, 8080)
    t.handle(s.event(Direction.EGRESS, b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\n", 1))
    s.event(Direction.EGRESS, b"01234", 2)  # never reported (lost)
    t.handle(s.event(Direction.EGRESS, b"56789", 3))
    t.handle(s.event(Direction.INGRESS, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 4))
    assert out == []  # waiting for the missing call
    t.release_held()
    ((x, _),) = out
    assert x.response.status == 201


def test_port_override_and_fallback_when_the_guess_is_wrong(tmp_path: Path) -> None:
    t, out = tracker(tmp_path, protocol_ports={9000: "postgresql"})
    s = Stream(t, 9000)
    # Configured as PostgreSQL, but this client speaks HTTP/1: the parser falls back.
    t.handle(s.event(Direction.EGRESS, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1))
    t.handle(s.event(Direction.INGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", 2))
    t.release_held()
    ((x, conn),) = out
    assert isinstance(x, HttpExchange) and isinstance(conn, Connection)
    assert conn.protos_tried == ("postgresql",)


def test_postgres_detected_from_the_startup_message_on_any_port(tmp_path: Path) -> None:
    t, out = tracker(tmp_path)
    s = Stream(t, 6543)
    startup = b"\x00\x03\x00\x00user\x00app\x00database\x00shop\x00\x00"
    t.handle(s.event(Direction.EGRESS, (len(startup) + 4).to_bytes(4, "big") + startup, 1))
    t.handle(s.event(Direction.INGRESS, b"R\x00\x00\x00\x08\x00\x00\x00\x00Z\x00\x00\x00\x05I", 2))
    t.handle(s.event(Direction.EGRESS, b"Q\x00\x00\x00\x0dSELECT 1;\x00", 3))
    t.handle(s.event(Direction.INGRESS, b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I", 4))
    t.release_held()
    ((x, _),) = out
    assert isinstance(x, SqlExchange) and (x.query, x.namespace) == ("SELECT 1;", "shop")


def close(sk: int, ts: int) -> ConnClose:
    return ConnClose(sk, ts, 0, 0, Role.CLIENT, 99, opened=1)


def test_an_answer_read_after_the_close_completes_the_request(tmp_path: Path) -> None:
    t, out = tracker(tmp_path)
    s = Stream(t, 8080)
    t.handle(s.event(Direction.EGRESS, b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n", 1))
    t.handle(close(s.sk, 2))  # the server's FIN came with its answer
    assert out == []
    t.handle(s.event(Direction.INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3))
    ((x, _),) = out
    assert x.response.status == 200
    assert len(t) == 0  # answered: it no longer lingers
    # more bytes read after that are the closed connection's, not a new one's
    t.handle(s.event(Direction.INGRESS, b"trailing", 4))
    assert len(t) == 0 and len(out) == 1


def test_a_closed_connection_whose_answer_never_comes_is_reported_after_a_while(
    tmp_path: Path,
) -> None:
    t, out = tracker(tmp_path)
    s = Stream(t, 8080)
    t.handle(s.event(Direction.EGRESS, b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n", 1))
    t.handle(close(s.sk, 2))
    t.expire(2 + LINGER_NS // 2)
    assert out == []
    t.expire(3 + LINGER_NS)
    ((x, _),) = out
    assert not x.answered and x.end_ts == 2  # it waited until the close
    assert len(t) == 0


def test_a_new_connection_at_a_lingering_address_ends_the_old_one(tmp_path: Path) -> None:
    t, out = tracker(tmp_path)
    s = Stream(t, 8080)
    t.handle(s.event(Direction.EGRESS, b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n", 1))
    t.handle(close(s.sk, 2))
    new = Stream(t, 8080)  # same socket address, opened again
    ((x, _),) = out
    assert not x.answered and x.request.target == "/old"
    t.handle(new.event(Direction.EGRESS, b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n", 3))
    t.handle(new.event(Direction.INGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", 4))
    assert [x.request.target for x, _ in out] == ["/old", "/new"]
