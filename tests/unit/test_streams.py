"""Connection tracking on synthetic kernel events: ordering, detection, fallback."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from records import traced

from otel_ebpf.model import (
    NODE_CALLBACK,
    ConnClose,
    ConnOpen,
    DataEvent,
    Direction,
    Endpoint,
    GoroutineLink,
    HttpExchange,
    OtlpSender,
    Role,
    SqlExchange,
)
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.own_traffic import OwnTraffic
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.streams import LINGER_NS, ConnectionTracker
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
    """Calls of one connection, with the offsets the kernel would give them; seen
    from the client (by default) or from the server, by thread `tid` of `pid`."""

    def __init__(
        self,
        t: ConnectionTracker,
        server_port: int,
        sk: int = 7,
        role: Role = Role.CLIENT,
        pid: int = 99,
        tid: int = 99,
        client: Endpoint = CLIENT,
    ) -> None:
        self.t, self.sk, self.role, self.pid, self.tid = t, sk, role, pid, tid
        self.pos = [0, 0]
        server = Endpoint("10.0.0.2", server_port)
        local, remote = (client, server) if role == Role.CLIENT else (server, client)
        t.handle(ConnOpen(sk, 1, role, pid, local, remote, False))

    def event(self, d: Direction, data: bytes, ts: int) -> DataEvent:
        off = self.pos[d]
        self.pos[d] += len(data)
        return DataEvent(
            self.sk, 1, d, self.role, self.pid, self.tid, 3, ts, off, len(data), off, data, b"app"
        )

    def send(self, d: Direction, data: bytes, ts: int) -> None:
        self.t.handle(self.event(d, data, ts))


def call_out_from_thread_77(t: ConnectionTracker) -> None:
    """Process 5's thread 77 makes an outgoing call (socket 23), answered."""
    call = Stream(t, 8080, sk=23, pid=5, tid=77)
    call.send(Direction.EGRESS, b"GET /dep HTTP/1.1\r\nHost: y\r\n\r\n", 4)
    call.send(Direction.INGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", 5)


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
    late = s.event(Direction.EGRESS, b"01234", 2)  # not reported in this poll
    t.handle(s.event(Direction.EGRESS, b"56789", 3))
    t.handle(s.event(Direction.INGRESS, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 4))
    assert out == []  # waiting for the missing call
    t.release_held()
    ((x, _),) = out
    assert x.response.status == 201
    t.handle(late)  # reported after all: its bytes were skipped already
    assert (t._telemetry.events_late, t._telemetry.parse_errors) == (1, 0)


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


def test_an_answer_another_thread_wrote_is_seen_even_when_the_close_ends_it(
    tmp_path: Path,
) -> None:
    """An HTTP/1.0 answer ends at the close: the thread that wrote it is still the
    one that answered (a process whose requests move between threads)."""
    t, out = tracker(tmp_path)
    reader = Stream(t, 8080, role=Role.SERVER, pid=7, tid=70)
    writer = Stream(t, 8080, role=Role.SERVER, pid=7, tid=71)
    writer.sk = reader.sk  # one connection, two threads of its server
    t.handle(reader.event(Direction.INGRESS, b"GET /x HTTP/1.0\r\n\r\n", 1))
    writer.pos = reader.pos
    t.handle(writer.event(Direction.EGRESS, b"HTTP/1.0 200 OK\r\n\r\nbody until close", 2))
    assert out == []  # its end is the close
    t.handle(ConnClose(reader.sk, 3, 0, 0, Role.SERVER, 7, opened=1))
    t.expire(4 + LINGER_NS)  # no late read came: the close ends it
    ((x, _),) = out
    assert x.response.status == 200 and 7 in t.correlator._seen_moving


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


class _Faulting:
    """A parser with a bug: its next call raises (its state stays the real one's)."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)

    def feed(self, *_args: object) -> list[object]:
        raise RuntimeError("a parser bug")


def test_a_request_lost_with_its_parser_leaves_no_busy_thread_behind(tmp_path: Path) -> None:
    """A connection whose parser faulted had a request in flight: the thread that
    read it (or a new thread given its id) must not seem to serve it still, or its
    next outgoing call would find two requests in flight and lose its parent."""
    t, out = tracker(tmp_path)
    lost_conn, next_conn = (
        Stream(t, 80, sk, Role.SERVER, pid=5, tid=77, client=Endpoint("10.0.0.1", port))
        for sk, port in ((21, 40001), (22, 40002))
    )
    lost_conn.send(Direction.INGRESS, b"GET /lost HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    lost = t._conns[21]
    assert lost.proto is not None

    lost.proto = _Faulting(lost.proto)
    lost_conn.send(Direction.INGRESS, b"more", 2)  # faults: that connection is silenced
    # thread 77 (or a new one given the id) serves a new request and calls out
    next_conn.send(Direction.INGRESS, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n", 3)
    call_out_from_thread_77(t)
    t.release_held()
    ((x, _),) = [(x, c) for x, c in out if c.sk == 23]
    assert x.token.parent_id != 0  # the /next request, not ambiguous


def test_requests_dropped_past_the_parsers_bound_end_and_are_counted(tmp_path: Path) -> None:
    """A client pipelining more requests than the HTTP/1 parser keeps (64): the
    oldest are dropped. They must end with the drop, counted, or their thread
    seems busy with them for minutes (the next outgoing call loses its parent,
    and every request end searched a list that only grew)."""
    t, out = tracker(tmp_path)
    telemetry = t._telemetry
    server = Stream(t, 80, 21, Role.SERVER, pid=5, tid=77, client=Endpoint("10.0.0.1", 40001))
    request = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n"
    server.send(Direction.INGRESS, request * 65, 1)  # one more than the parser keeps
    assert telemetry.requests_dropped == 1
    server.send(Direction.EGRESS, b"HTTP/1.1 204 No Content\r\n\r\n" * 64, 2)
    server.send(Direction.INGRESS, request, 3)
    # thread 77 serves that last request only, and calls out for it
    call_out_from_thread_77(t)
    t.release_held()
    t.close_all(6)
    ((x, _),) = [(x, c) for x, c in out if c.sk == 23]
    assert x.token.parent_id != 0


def test_a_chain_stays_one_trace_when_the_first_send_is_reported_last(tmp_path: Path) -> None:
    """A's thread was preempted between delivering its request and the kernel
    reporting it: B read it, called C and was answered before A's send showed."""
    t, built = traced(tmp_path)
    a_end, b_end = Endpoint("127.0.0.1", 40000), Endpoint("127.0.0.1", 8080)
    b_out, c_end = Endpoint("127.0.0.1", 40001), Endpoint("127.0.0.1", 9090)
    sides = {  # sk: (role, pid, local, remote)
        1: (Role.CLIENT, 10, a_end, b_end),
        2: (Role.SERVER, 20, b_end, a_end),
        3: (Role.CLIENT, 20, b_out, c_end),
        4: (Role.SERVER, 30, c_end, b_out),
    }
    pos: dict[tuple[int, Direction], int] = {}
    for sk, (role, pid, local, remote) in sides.items():
        t.handle(ConnOpen(sk, 1, role, pid, local, remote, False))

    def call(sk: int, d: Direction, data: bytes, ts: int) -> None:
        role, pid, _, _ = sides[sk]
        off = pos.get((sk, d), 0)
        pos[(sk, d)] = off + len(data)
        t.handle(DataEvent(sk, 1, d, role, pid, pid, 3, ts, off, len(data), off, data, b"app"))

    request, leaf = (
        b"GET /chain HTTP/1.1\r\nHost: b\r\n\r\n",
        b"GET /leaf HTTP/1.1\r\nHost: c\r\n\r\n",
    )
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    call(2, Direction.INGRESS, request, 2)  # B reads A's request...
    call(3, Direction.EGRESS, leaf, 3)  # ...calls C
    call(4, Direction.INGRESS, leaf, 4)
    call(4, Direction.EGRESS, answer, 5)
    call(3, Direction.INGRESS, answer, 6)  # B has C's answer
    call(1, Direction.EGRESS, request, 1)  # only now is A's send reported
    call(2, Direction.EGRESS, answer, 7)
    call(1, Direction.INGRESS, answer, 8)
    t.release_held()
    t.close_all(9)
    assert len(built) == 4
    assert len({s.context.trace_id for s in built}) == 1  # one trace, not two
    parents = {s.kind.name + str(s.attributes["server.port"]): s.parent for s in built}
    assert parents["CLIENT8080"] is None
    assert parents["SERVER8080"] is not None and parents["SERVER9090"] is not None


def test_the_request_the_kernel_counted_is_marked_and_only_that_one(tmp_path: Path) -> None:
    """The kernel flags the read that began with a request line: the next request
    to start is its (even when its head ends in a later read); a request pipelined
    in the same read, or one without the flag, is counted from its span."""
    t, out = tracker(tmp_path)
    s = Stream(t, 8080, role=Role.SERVER)
    In, Out = Direction.INGRESS, Direction.EGRESS
    s.t.handle(s.event(In, b"GET /a HTTP/1.1\r\nHost: x\r\n", 1).replace(red_counted=True))
    s.send(In, b"X-Long: header\r\n\r\n", 2)  # the head ends here
    s.send(Out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    pipelined = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    s.t.handle(s.event(In, pipelined, 4).replace(red_counted=True))
    s.send(Out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2, 5)
    s.send(In, b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n", 6)
    s.send(Out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 7)
    t.close_all(10)
    marked = {x.request.target: x.token.red_in_kernel for x, _ in out}
    assert marked == {"/a": True, "/b": True, "/c": False, "/d": False}


def test_a_process_first_seen_without_a_name_takes_the_kernels_later(tmp_path: Path) -> None:
    """A client that exited before /proc was read, first looked up from an event
    with no name (a connection's open), is named by the next event that has one."""
    registry = ProcessRegistry(proc=str(tmp_path))
    assert registry.get(4321).executable_name == ""
    assert registry.get(4321, b"ab" + bytes(14)).service_name == "ab"
    assert registry.get(4321).service_name == "ab"  # kept
    assert registry.get(99, bytes(16)).executable_name == ""  # no name to take


def test_a_peer_whose_every_call_was_shed_is_named_by_its_open(tmp_path: Path) -> None:
    """The service graph names a server span's client by the client's end on this
    node. The budget may have shed every request that end made so far (the kernel
    sent none of its calls): its open still says whose it is."""
    registry = ProcessRegistry(proc=str(tmp_path))
    registry.get(5, b"ab" + bytes(14))  # as the kernel's comm names it
    t = ConnectionTracker(lambda x, conn: None, registry, Selector(), SelfTelemetry())
    server_end = Endpoint("10.0.0.2", 8080)
    t.handle(ConnOpen(7, 1, Role.CLIENT, 5, CLIENT, server_end, False))  # nothing sent after
    served = Stream(t, 8080, sk=8, role=Role.SERVER, pid=6, tid=6)
    served.send(Direction.INGRESS, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    served.send(Direction.EGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", 2)
    assert t.service_at(server_end, CLIENT) == "ab"
    assert t.service_at(server_end, Endpoint("10.0.0.9", 1)) is None  # not on this node
    t.handle(ConnOpen(9, 1, Role.CLIENT, 77, Endpoint("10.0.0.1", 40001), server_end, False))
    assert t.service_at(server_end, Endpoint("10.0.0.1", 40001)) is None  # no name known


def test_a_peer_whose_close_was_read_first_is_still_named(tmp_path: Path) -> None:
    """A client that closes at once (ab without keep-alive): its close can be read
    before the server's exchange is built, and the graph edge still names it."""
    registry = ProcessRegistry(proc=str(tmp_path))
    registry.get(5, b"ab" + bytes(14))
    t = ConnectionTracker(lambda x, conn: None, registry, Selector(), SelfTelemetry())
    server_end = Endpoint("10.0.0.2", 8080)
    t.handle(ConnOpen(7, 1, Role.CLIENT, 5, CLIENT, server_end, False))
    t.handle(ConnClose(7, 2, 0, 0, Role.CLIENT, 5, CLIENT, server_end, opened=1))
    assert t.service_at(server_end, CLIENT) == "ab"
    assert t.service_at(server_end, Endpoint("10.0.0.1", 40001)) is None  # never seen


def test_an_otlp_clients_pid_is_found_in_proc_before_its_open_event() -> None:
    """An SDK's first export can be handled before the kernel's report of its
    connection: /proc names the process (here, this one) all the same."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    try:
        own = OwnTraffic()
        own.add_listener(listener.getsockname()[1])
        local = Endpoint(*client.getsockname())
        port = listener.getsockname()[1]
        assert own.pid_of_peer(OtlpSender(local, port)) == os.getpid()
        assert own.pid_of_peer(OtlpSender(local, 1)) is None  # not to that port
        assert own.pid_of_peer(OtlpSender(Endpoint("127.0.0.1", 1), port)) is None  # nobody's
    finally:
        client.close()
        listener.close()


def test_asyncio_calls_are_the_children_of_the_request_their_task_answers(
    tmp_path: Path,
) -> None:
    """Process 5's event loop (thread 50) reads two requests outside any task; task
    2 calls out, then task 1; task 1 answers the first request, task 2 the second
    (bpf/asyncio.bpf.c names the task of each call). Each call is the child of its
    own task's request, though the thread had both in flight."""
    t, built = traced(tmp_path)
    requests = [Stream(t, 8080, sk=sk, role=Role.SERVER, pid=5, tid=50) for sk in (1, 2)]
    for ts, incoming in enumerate(requests, 10):
        t.handle(incoming.event(Direction.INGRESS, f"GET /in{ts} HTTP/1.1\r\n\r\n".encode(), ts))
    for ts, task in ((20, 2), (21, 1)):
        out = Stream(t, 9090, sk=10 + task, pid=5, tid=50)
        head = out.event(
            Direction.EGRESS, f"GET /dep{task} HTTP/1.1\r\nHost: y\r\n\r\n".encode(), ts
        )
        t.handle(head.replace(task=task))
        out.send(Direction.INGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", ts + 10)
    for ts, (task, incoming) in enumerate(((1, requests[0]), (2, requests[1])), 40):
        answer = incoming.event(Direction.EGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", ts)
        t.handle(answer.replace(task=task))
    t.release_held()
    t.close_all(100)
    servers = {s.attributes["url.path"]: s for s in built if s.kind.name == "SERVER"}
    clients = {s.attributes["url.path"]: s for s in built if s.kind.name == "CLIENT"}
    for server_path, client_path in (("/in10", "/dep1"), ("/in11", "/dep2")):
        server, client = servers[server_path], clients[client_path]
        assert client.parent is not None and client.parent.span_id == server.context.span_id
        assert client.context.trace_id == server.context.trace_id


def test_node_calls_are_the_children_of_the_request_whose_read_and_answer_frame_them(
    tmp_path: Path,
) -> None:
    """Process 5's loop (thread 50) reads two requests (sockets 1, 2); the callback
    each read began writes a call (sockets 12, 11: bpf/node.bpf.c names the
    callback and the socket whose read began it); each answer is written in the
    callback its call's response began. Each call is its own request's child."""
    t, built = traced(tmp_path)
    requests = [Stream(t, 8080, sk=sk, role=Role.SERVER, pid=5, tid=50) for sk in (1, 2)]
    for ts, incoming in enumerate(requests, 10):
        t.handle(incoming.event(Direction.INGRESS, f"GET /in{ts} HTTP/1.1\r\n\r\n".encode(), ts))
    calls = {}
    for ts, cause in ((20, 2), (21, 1)):
        out = calls[cause] = Stream(t, 9090, sk=10 + cause, pid=5, tid=50)
        head = out.event(
            Direction.EGRESS, f"GET /dep{cause} HTTP/1.1\r\nHost: y\r\n\r\n".encode(), ts
        )
        t.handle(head.replace(task=NODE_CALLBACK | ts, task_cause=cause))
    for ts, cause in ((30, 1), (32, 2)):
        calls[cause].send(Direction.INGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", ts)
        answer = requests[cause - 1].event(
            Direction.EGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", ts + 1
        )
        t.handle(answer.replace(task=NODE_CALLBACK | ts, task_cause=10 + cause))
    t.release_held()
    t.close_all(100)
    servers = {s.attributes["url.path"]: s for s in built if s.kind.name == "SERVER"}
    clients = {s.attributes["url.path"]: s for s in built if s.kind.name == "CLIENT"}
    for server_path, client_path in (("/in10", "/dep1"), ("/in11", "/dep2")):
        server, client = servers[server_path], clients[client_path]
        assert client.parent is not None and client.parent.span_id == server.context.span_id
        assert client.context.trace_id == server.context.trace_id


def test_a_go_call_written_by_another_goroutine_is_the_child_of_the_request_it_serves(
    tmp_path: Path,
) -> None:
    """Go process 5: goroutine G reads a request on thread 50; net/http's writer
    goroutine writes its call on thread 51, naming G (bpf/go.bpf.c). The call is
    the request's child; the same call naming nobody is nobody's."""
    g = 0xC000001000
    t, built = traced(tmp_path)
    t.correlator._moves_requests = lambda pid: pid == 5  # a Go binary (read from its file)
    incoming = Stream(t, 8080, sk=1, role=Role.SERVER, pid=5, tid=50)
    for sk, link in ((2, GoroutineLink(g, 21)), (3, None)):
        t.handle(
            incoming.event(Direction.INGRESS, b"GET /in HTTP/1.1\r\n\r\n", 10 * sk).replace(
                goroutine=GoroutineLink(g, 0)
            )
        )
        out = Stream(t, 9090, sk=10 + sk, pid=5, tid=51)
        head = out.event(Direction.EGRESS, b"GET /dep HTTP/1.1\r\nHost: y\r\n\r\n", 10 * sk + 1)
        t.handle(head.replace(goroutine=link, ts=10 * sk + 1))
        out.send(Direction.INGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", 10 * sk + 2)
        t.handle(
            incoming.event(
                Direction.EGRESS, b"HTTP/1.1 204 No Content\r\n\r\n", 10 * sk + 3
            ).replace(goroutine=GoroutineLink(g, 0))
        )
    t.release_held()
    t.close_all(100)
    server_1, client_1, server_2, client_2 = sorted(built, key=lambda s: s.start_time)
    assert client_1.parent is not None and client_1.parent.span_id == server_1.context.span_id
    assert client_2.parent is None and server_2.context.trace_id != client_2.context.trace_id


def test_retransmits_after_a_servers_answer_reach_its_span_only_when_they_grew(
    tmp_path: Path,
) -> None:
    """An answer waits for its connection to move on: the segments its bytes
    needed again since the request began are the span's (and none is added
    when the count did not grow)."""
    t, out = tracker(tmp_path)
    s = Stream(t, 8080, sk=9, role=Role.SERVER)

    def call(d: Direction, data: bytes, ts: int, retransmits: int) -> None:
        t.handle(s.event(d, data, ts).replace(retransmits=retransmits))

    get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    call(Direction.INGRESS, get, 1, 2)
    call(Direction.EGRESS, ok, 2, 2)
    call(Direction.INGRESS, get, 3, 5)  # moved on: 3 more since the first began
    call(Direction.EGRESS, ok, 4, 5)
    call(Direction.INGRESS, get, 5, 5)  # none more since the second began
    first, second = (x.token.net.retransmits for x, _ in out[:2])
    assert (first, second) == (3, 0)
