"""The collector's HTTP endpoints serve a bounded number of connections at once:
past it a connection is answered 503 at once, and served again once others end;
a request must arrive whole within the handler's timeout (real sockets on
loopback)."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler

import pytest

from otel_ebpf.http_server import QuietHTTPServer, RequestDeadline


class Hello(BaseHTTPRequestHandler):
    timeout = 30

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _until(predicate: Callable[[], bool]) -> None:
    """Polls until `predicate` holds; a hang guard, not a measurement."""
    for _ in range(1000):
        if predicate():
            return
        time.sleep(0.01)
    pytest.fail("the server never reached the state the test waits for")


@pytest.fixture
def server() -> Iterator[QuietHTTPServer]:
    s = QuietHTTPServer(("127.0.0.1", 0), Hello, max_connections=3)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


def _get(port: int) -> int:
    http = HTTPConnection("127.0.0.1", port, timeout=10)
    http.request("GET", "/")
    answer = http.getresponse()
    answer.read()
    http.close()
    return answer.status


def test_connections_past_the_bound_are_answered_503_until_others_end(
    server: QuietHTTPServer,
) -> None:
    port = server.server_address[1]
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for s in stalled:
        s.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest
    _until(lambda: server.connections_active == 3)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
        answer = refused.makefile("rb").read()  # all of it: the server closes at once
    assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in answer
    assert server.connections_refused == 1
    for s in stalled:
        s.close()
    _until(lambda: server.connections_active == 0)
    assert _get(port) == 200


def _ipv6_loopback() -> bool:
    """Whether this machine has ::1, asked of a plain socket: never of the
    server under test, whose own failure must fail the test."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="the machine has no IPv6 loopback")
def test_an_ipv6_endpoint_is_served() -> None:
    server = QuietHTTPServer(("::1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        http = HTTPConnection("::1", server.server_address[1], timeout=10)
        http.request("GET", "/")
        assert http.getresponse().status == 200
        http.close()
    finally:
        server.shutdown()
        server.server_close()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_deadline_covers_the_whole_request_and_restarts_after_each_answer() -> None:
    ours, client = socket.socketpair()
    clock = _Clock()
    with ours, client:
        stream = RequestDeadline(ours, 30, clock)
        reader = stream.makefile("rb", 0)
        client.sendall(b"GET / HTTP/1.1\r\n")
        clock.now += 29  # every read in time, however many there are
        assert reader.read1(100) == b"GET / HTTP/1.1\r\n"
        stream.sendall(b"HTTP/1.1 200 OK\r\n\r\n")  # an answer: the next request's time
        assert client.recv(100).startswith(b"HTTP/1.1 200")
        client.sendall(b"GET")
        clock.now += 29  # 58 s since the connection began, 29 since the answer
        assert reader.read1(100) == b"GET"
        clock.now += 2
        with pytest.raises(TimeoutError, match="not received within 30 s"):
            reader.read1(100)


class Quick(Hello):
    timeout = 1  # seconds for a request to arrive whole


def _closed(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096, socket.MSG_PEEK) == b""
    except OSError:  # reset
        return True


def test_a_request_trickled_in_is_dropped_at_its_deadline() -> None:
    """A byte every 50 ms: no read waits near the second the handler allows, and
    the request would take over 10 s; the connection is closed at the deadline
    (each read's own timeout kept it open before)."""
    server = QuietHTTPServer(("127.0.0.1", 0), Quick)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    request = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 20 + b"\r\n"
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1])) as client:
            sent = 0
            for byte in request:
                if _closed(client):
                    break
                try:
                    client.sendall(bytes([byte]))
                except OSError:
                    break
                sent += 1
                time.sleep(0.05)
        assert sent < len(request) // 2, "the trickled request was read to its end"
        _until(lambda: server.connections_active == 0)
    finally:
        server.shutdown()
        server.server_close()
