"""The HTTP server class for the collector's own endpoints (OTLP/HTTP in, health)."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


class RequestDeadline:
    """A handler's socket whose `timeout` bounds the whole request, not each read:
    from the end of the last answer (or the connection's start) the next request
    must arrive whole within it. Per read, a client that sends a byte now and
    then would hold its connection, and its slot, for ever."""

    def __init__(
        self, sock: socket.socket, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sock = sock
        self._timeout = timeout_s
        self._clock = clock
        self._deadline = clock() + timeout_s

    def settimeout(self, timeout_s: float | None) -> None:  # the handler's setup
        if timeout_s is not None:
            self._timeout = timeout_s
            self._deadline = self._clock() + timeout_s

    def makefile(self, mode: str = "r", buffering: int = -1) -> io.BufferedReader:
        """The handler's request stream, reading through the deadline."""
        if mode != "rb":
            raise ValueError("only the request stream is made here")
        size = buffering if buffering > 0 else io.DEFAULT_BUFFER_SIZE
        return io.BufferedReader(socket.SocketIO(self, "rb"), size)  # type: ignore[arg-type]

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise TimeoutError(f"request not received within {self._timeout:g} s")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer, nbytes)

    def sendall(self, data: Any) -> None:
        """An answer: the next request's time starts once it is sent."""
        self._sock.settimeout(self._timeout)
        self._sock.sendall(data)
        self._deadline = self._clock() + self._timeout

    def __getattr__(self, name: str) -> Any:  # fileno, setsockopt, getpeername...
        return getattr(self._sock, name)


class QuietHTTPServer(ThreadingHTTPServer):
    """A client that resets or stalls is its own business: one debug line, never
    a traceback on stderr (socketserver's default). Handler threads never hold
    up shutdown.

    Each connection holds a thread until it ends or its handler's timeout (a
    deadline for each request, RequestDeadline), so at most `max_connections`
    are served at once; past them a connection is answered
    503 at once and closed, from the accepting thread. Idle or stalled clients
    (one local process is enough) then cost neither unbounded threads nor the
    listen queue, which other clients, the kubelet's probes among them, need."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops handshakes under any burst

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int = 64) -> None:
        if ":" in address[0]:  # an IPv6 address ("::1", "::"), given without its brackets
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self.connections_active = 0
        self.connections_refused = 0
        self._refusal_logged = float("-inf")

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self.connections_active >= self.max_connections
            if full:
                self.connections_refused += 1
            else:
                self.connections_active += 1
        if full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._ended()
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The handler reads through its `timeout` as a deadline per request."""
        timeout = getattr(self.RequestHandlerClass, "timeout", None)
        if timeout is not None:
            request = RequestDeadline(request, timeout)
        super().finish_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._ended()

    def _ended(self) -> None:
        with self._lock:
            self.connections_active -= 1

    def _refuse(self, request: socket.socket) -> None:
        request.setblocking(False)  # the accepting thread never waits on a client
        try:
            request.sendall(BUSY_ANSWER)
            request.recv(65536)  # what the client sent already: closed unread, it would
        except OSError:  # turn the close into a reset, which can beat the answer
            pass
        self.shutdown_request(request)
        if time.monotonic() >= self._refusal_logged + 60:
            self._refusal_logged = time.monotonic()
            log.warning(
                "port %d: %d connections open at once, the most served; further ones are "
                "answered 503 (%d in all)",
                self.server_address[1],
                self.max_connections,
                self.connections_refused,
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended in error", client_address, exc_info=True)


def serve_prometheus(host: str, port: int) -> QuietHTTPServer:
    """The Prometheus scrape endpoint (prometheus_client's default registry, where
    the OpenTelemetry Prometheus reader registers), bounded as the others are."""
    from prometheus_client.exposition import MetricsHandler

    class Scrape(MetricsHandler):
        timeout = 10  # seconds: a scraper asks at once; a client that stalls frees its slot

    server = QuietHTTPServer((host, port), Scrape)
    threading.Thread(target=server.serve_forever, name="prometheus", daemon=True).start()
    return server
