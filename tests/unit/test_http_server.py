"""The collector's HTTP endpoints serve a bounded number of connections at once:
past it a connection is answered 503 at once, and served again once others end
(real sockets on loopback)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler

import pytest

from otel_ebpf.http_server import QuietHTTPServer


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
