"""Is it the application or the network? Classic faults, made on this machine,
and the verdict the exported spans give on each (README: Reading a slow request)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import (
    NGINX_BASE,
    CollectorProcess,
    NetnsHosts,
    PythonServer,
    end_process,
    free_port,
    listening,
    wait_until,
)
from otlp_sink import CLIENT, SERVER, GrpcSink, Span


def spans_at(sink: GrpcSink, port: int, kind: int, since: int, path: str = "") -> list[Span]:
    return [
        s
        for s in list(sink.store.spans)
        if s.kind == kind
        and s.start_ns >= since
        and s.attributes.get("server.port") == port
        and (not path or s.attributes.get("url.path") == path)
    ]


def test_a_body_held_back_by_nagle_behind_a_delayed_ack_is_named_a_stall(
    collector: CollectorProcess, grpc_sink: GrpcSink, py_server: PythonServer
) -> None:
    """The textbook case: a client (Nagle on) writes a request's head and its body
    in two small writes; the server acknowledges the head only when its delayed-ACK
    timer fires, so the body comes about 40 ms later. The server's own work is
    under a millisecond: the spans must say stall, not server."""
    body = b'{"item": 42}'
    head = (f"POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n\r\n").encode()

    def post_twelve(nodelay: bool) -> None:
        with socket.create_connection(("127.0.0.1", py_server.port)) as sock:
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5)
            for _ in range(12):
                sock.sendall(head)
                sock.sendall(body)
                expected = b"received %d\n" % len(body)
                answer = b""
                while not answer.endswith(expected):
                    answer += sock.recv(65536)

    def stalled(kind: int, since: int) -> list[Span]:
        return [
            s
            for s in spans_at(grpc_sink, py_server.port, kind, since, "/orders")
            if s.attributes.get("otel_ebpf.tcp.stall") == "delayed_ack_stall"
        ]

    since = time.time_ns()
    post_twelve(nodelay=False)
    # The first requests may be acknowledged at once (quick-ACK mode at a
    # connection's start); the rest wait for the delayed-ACK timer.
    wait_until(lambda: len(stalled(SERVER, since)) >= 6, 30, "stalls named on the server")
    for span in stalled(SERVER, since):
        a = span.attributes
        assert a["otel_ebpf.verdict"] == "delayed_ack_stall"
        # the stall is the network's share; the handler's work is small beside it
        assert a["otel_ebpf.time.network"] >= a["otel_ebpf.tcp.stall.time"]
        assert a["otel_ebpf.time.server"] * 4 < a["otel_ebpf.tcp.stall.time"]
    wait_until(lambda: len(stalled(CLIENT, since)) >= 6, 30, "stalls named on the client")
    for span in stalled(CLIENT, since):
        a = span.attributes
        assert a["otel_ebpf.verdict"] == "delayed_ack_stall"
        assert "otel_ebpf.time.estimated" not in a  # its server is on this node
        assert a["otel_ebpf.time.server"] * 4 < a["otel_ebpf.time.network"]
        assert a["otel_ebpf.tcp.nodelay"] is False  # the socket never set it: Nagle on

    # The advice holds: the same client with TCP_NODELAY does not stall.
    since = time.time_ns()
    post_twelve(nodelay=True)
    wait_until(
        lambda: len(spans_at(grpc_sink, py_server.port, SERVER, since, "/orders")) == 12,
        30,
        "12 server spans",
    )
    assert stalled(SERVER, since) == []


NGINX_EDGE = (
    NGINX_BASE
    + """
  server {{
    listen {address}:{port};
    root {root}/www;
    location = /backend {{ proxy_pass http://127.0.0.1:{backend}; }}
  }}
}}
"""
)


@contextlib.contextmanager
def nginx_edge(root: Path, address: str, backend: int = 9, ns: str = "") -> Iterator[int]:
    """nginx with sendfile on `address` (in namespace `ns`), a 2 MiB file, and
    /backend proxied to 127.0.0.1:`backend` (by default, the discard port: nothing)."""
    port = free_port()
    (root / "www").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "www" / "large.bin").write_bytes(bytes(2 << 20))
    conf = root / "nginx.conf"
    conf.write_text(NGINX_EDGE.format(root=root, address=address, port=port, backend=backend))
    argv = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(root)]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv] if ns else argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (root / "nginx.pid").exists(), 10, "nginx started")
        yield port
    finally:
        end_process(proc)


TBF_8MBIT = ("rate", "8mbit", "burst", "32kb", "latency", "400ms")


@pytest.fixture(scope="module")
def hosts() -> Iterator[NetnsHosts]:
    h = NetnsHosts("os")
    yield h
    h.close()


def shaped_download(hosts: NetnsHosts, url: str) -> int:
    """Fetches `url` from the client's namespace once as it is (the server is up),
    then again through an 8 Mbit/s link; when the second began."""
    shape = ["ip", "netns", "exec", hosts.server_ns, "tc", "qdisc"]
    curl = ["curl", "-sf", "-o", "/dev/null", "--retry", "5", "--retry-connrefused"]
    assert hosts.run(hosts.client_ns, [*curl, url]).wait(30) == 0  # up, unshaped
    subprocess.run([*shape, "replace", "dev", "os-vb", "root", "tbf", *TBF_8MBIT], check=True)
    try:
        since = time.time_ns()
        assert hosts.run(hosts.client_ns, [*curl, url]).wait(60) == 0  # about 2 s
    finally:
        subprocess.run([*shape, "del", "dev", "os-vb", "root"], check=False)
    return since


def assert_waited_for_the_network(sink: GrpcSink, port: int, since: int) -> None:
    """The server's span of the shaped download: most of it waiting for room to
    send (the network's), its own work a small part."""

    def server_span() -> Span | None:
        found = spans_at(sink, port, SERVER, since, "/large.bin")
        return found[0] if found else None

    wait_until(server_span, 30, "the server's span")
    a = server_span().attributes  # type: ignore[union-attr]
    assert a["otel_ebpf.verdict"] == "network", a
    assert a["otel_ebpf.tcp.send_wait"] * 2 > a["otel_ebpf.time.network"]
    assert a["otel_ebpf.time.server"] * 4 < a["otel_ebpf.time.network"]


def test_a_large_response_over_a_slow_link_is_the_network(
    tmp_path: Path, collector: CollectorProcess, grpc_sink: GrpcSink, hosts: NetnsHosts
) -> None:
    """nginx sends 2 MiB with sendfile through an 8 Mbit/s link: its non-blocking
    socket fills, and it waits in epoll for room. That wait is the network's."""
    with nginx_edge(tmp_path / "edge", hosts.server_ip, ns=hosts.server_ns) as port:
        since = shaped_download(hosts, f"http://{hosts.server_ip}:{port}/large.bin")
        assert_waited_for_the_network(grpc_sink, port, since)


# Answers every request with 2 MiB, sent with send() on a non-blocking socket,
# waiting in select() for room whenever a send returns short.
NONBLOCKING_SENDER = """
import select, socket, sys
body = bytes(2 << 20)
answer = b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, _ = listener.accept()
    with conn:
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                break
            head += chunk
        conn.setblocking(False)
        left = memoryview(answer)
        while head and left:
            select.select([], [conn], [])
            try:
                left = left[conn.send(left):]
            except BlockingIOError:
                pass
"""


def test_a_short_send_on_a_slow_link_is_the_network(
    collector: CollectorProcess, grpc_sink: GrpcSink, hosts: NetnsHosts
) -> None:
    """The same with send() (sendto): each send the full buffer cuts short is where
    the wait for room begins (the transfer probe sees it: no exit probe does)."""
    port = free_port()
    server = hosts.run(
        hosts.server_ns, [sys.executable, "-c", NONBLOCKING_SENDER, hosts.server_ip, str(port)]
    )
    try:
        since = shaped_download(hosts, f"http://{hosts.server_ip}:{port}/large.bin")
        assert_waited_for_the_network(grpc_sink, port, since)
    finally:
        end_process(server)


class ResettingBackend:
    """Reads a request, holds it `hold_s`, then aborts the connection (RST)."""

    def __init__(self, hold_s: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hold_s = hold_s
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                time.sleep(self.hold_s)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")

    def close(self) -> None:
        self.listener.close()


def test_a_backend_that_holds_then_resets_is_blamed_not_the_proxy(
    tmp_path: Path, collector: CollectorProcess, grpc_sink: GrpcSink
) -> None:
    """nginx proxies to a backend that holds the request 150 ms, then resets. The
    backend hop's span lasts until the reset and names it; nginx's own span says
    its time went downstream."""
    backend = ResettingBackend(0.15)
    try:
        with nginx_edge(tmp_path / "proxy", "127.0.0.1", backend=backend.port) as port:
            wait_until(lambda: listening(port), 10, "nginx listening")
            since = time.time_ns()
            argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
            out = subprocess.run([*argv, f"http://127.0.0.1:{port}/backend"], capture_output=True)
            assert out.stdout == b"502"

            def hop() -> list[Span]:
                return spans_at(grpc_sink, backend.port, CLIENT, since)

            def edge() -> list[Span]:
                return spans_at(grpc_sink, port, SERVER, since, "/backend")

            wait_until(lambda: hop() and edge(), 30, "the proxy's spans")
    finally:
        backend.close()
    (call,) = hop()
    (proxy,) = edge()
    assert call.attributes["error.type"] == "connection_reset"
    # until the reset, not 0 ms: the proxy spent its time waiting on this call
    assert (call.end_ns - call.start_ns) * 10 >= (proxy.end_ns - proxy.start_ns) * 8
    a: dict[str, Any] = proxy.attributes
    assert a["http.response.status_code"] == 502
    assert a["otel_ebpf.verdict"] == "downstream", a
    assert a["otel_ebpf.time.downstream"] > 4 * a["otel_ebpf.time.server"]


SHRINKING_SERVER = """
import socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    # too late: the window scale was fixed in the handshake
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with conn:
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        if not data:
            continue
        head, _, body = data.partition(b"\\r\\n\\r\\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\\r\\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
"""


def test_a_receive_buffer_shrunk_after_the_handshake_is_flow_control_and_reported_once(
    collector: CollectorProcess, grpc_sink: GrpcSink
) -> None:
    port = free_port()
    env = {**os.environ, "OTEL_SERVICE_NAME": "shrunk-server"}
    argv = [sys.executable, "-c", SHRINKING_SERVER, str(port)]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        since = time.time_ns()
        for _ in range(2):  # 256 KiB through a window of a few KiB: about 3 s each
            with socket.create_connection(("127.0.0.1", port)) as sock:
                body = bytes(256 << 10)
                sock.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
                )
                sock.sendall(body)
                sock.settimeout(30)
                while sock.recv(65536):
                    pass

        def uploads() -> list[Span]:
            return spans_at(grpc_sink, port, SERVER, since, "/upload")

        wait_until(lambda: len(uploads()) == 2, 30, "the uploads' spans")
        for span in uploads():
            a = span.attributes
            assert a["otel_ebpf.verdict"] == "flow_control", a
            assert a["otel_ebpf.tcp.window_small"] > 0
            assert a["otel_ebpf.tcp.misconfiguration"] == "SO_RCVBUF set after the handshake"

        def reported() -> int:
            series = grpc_sink.metrics.series(
                "otel_ebpf.tcp.misconfigurations", **{"service.name": "shrunk-server"}
            )
            return int(sum(p.value for p in series.values()))

        wait_until(lambda: reported() == 1, 30, "one misconfiguration reported")
        said = collector.log_path.read_text().count(
            f"sets SO_RCVBUF=4096 on connections accepted on port {port}"
        )
        assert said == 1
    finally:
        end_process(server)
