"""Garbage, binary traffic and connections that predate the collector."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import time
from pathlib import Path

from harness import CollectorProcess, Nginx, PythonServer, file_resource_spans, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink
from test_nginx import expect_exactly

rng = random.Random(1234)


def blast_garbage(port: int) -> None:
    """Binary junk, a TLS ClientHello look-alike and broken HTTP on fresh connections."""
    payloads = [
        bytes(rng.getrandbits(8) for _ in range(2000)),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(200),
        b"GET\x00/\xff HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(64),
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(2)
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # the server may reset us: that is its right


def test_garbage_makes_no_span_and_the_next_request_is_traced(
    collector: CollectorProcess, grpc_sink: GrpcSink, nginx: Nginx, py_server: PythonServer
) -> None:
    since = time.time_ns()
    for port in (nginx.port, py_server.port):
        blast_garbage(port)
    for port in (nginx.port, py_server.port):
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/after-garbage")
        conn.getresponse().read()
        conn.close()
    # exactly one span per server: the well-formed request, nothing for the junk
    for port, service in ((nginx.port, "nginx"), (py_server.port, "py-backend")):
        (span,) = expect_exactly(grpc_sink.store, port, SERVER, service, 1, since)
        assert span.attributes["url.path"] == "/after-garbage"
    assert collector.proc.poll() is None  # still running
    # The ClientHello look-alike reached plain-text ports whose servers' OpenSSL
    # is read: noted as such, never said to be TLS the collector cannot read.
    wait_until(
        lambda: "(nginx) received a TLS handshake" in collector.log_path.read_text(),
        10,
        "the note on nginx's plain-text port",
    )
    log = collector.log_path.read_text()
    assert "(nginx): OpenSSL calls" not in log
    assert f"TLS not visible for pid {py_server.proc.pid} " not in log


def test_connection_opened_before_the_collector_is_traced_from_its_next_request(
    tmp_path: Path, py_server: PythonServer
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", py_server.port)
    conn.request("GET", "/before")
    conn.getresponse().read()
    local_port = conn.sock.getsockname()[1]

    out = tmp_path / "spans.jsonl"
    late = CollectorProcess(tmp_path / "late", {"file": {"path": str(out)}})
    try:
        for i in range(3):
            conn.request("GET", f"/after/{i}")
            conn.getresponse().read()
        # A long-lived connection stays open: its tuple is read from /proc when the
        # collector first sees it, which must not be after the close.
        time.sleep(1.0)
        conn.close()
    finally:
        assert late.stop() == 0

    spans = [
        span for rs in file_resource_spans(out) for ss in rs["scopeSpans"] for span in ss["spans"]
    ]

    def attrs(span: dict) -> dict:  # type: ignore[type-arg]
        return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}

    mine = [s for s in spans if str(attrs(s).get("server.port")) == str(py_server.port)]
    servers = [s for s in mine if s["kind"] == SERVER]
    clients = [s for s in mine if s["kind"] == CLIENT]
    assert [attrs(s)["url.path"] for s in clients] == ["/after/0", "/after/1", "/after/2"]
    # The server was already blocked in recv() for /after/0 when the probes
    # attached, so that read's buffer is unknown (only its length is seen);
    # every request read after that is traced, and nothing bogus appears.
    paths = [attrs(s)["url.path"] for s in servers]
    assert paths in (["/after/0", "/after/1", "/after/2"], ["/after/1", "/after/2"])
    # the tuple came from /proc, since the kernel never showed us the handshake
    assert all(str(attrs(s)["client.port"]) == str(local_port) for s in servers)
    assert all(str(attrs(s)["network.peer.port"]) == str(py_server.port) for s in clients)


def test_selection_by_executable_and_port(
    tmp_path: Path, nginx: Nginx, py_server: PythonServer
) -> None:
    """OTEL_EBPF_AUTO_TARGET_EXE and OTEL_EBPF_OPEN_PORT narrow what is traced."""
    out = tmp_path / "spans.jsonl"
    picky = CollectorProcess(
        tmp_path / "picky",
        {"file": {"path": str(out)}},
        extra_env={"OTEL_EBPF_AUTO_TARGET_EXE": "nginx", "OTEL_EBPF_OPEN_PORT": str(nginx.port)},
    )
    try:
        for port in (nginx.port, py_server.port):
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/selected")
            conn.getresponse().read()
            conn.close()
        time.sleep(1.0)
    finally:
        assert picky.stop() == 0
    services = [rs["resource"]["attributes"] for rs in file_resource_spans(out)]
    names = {
        a["value"]["stringValue"] for attrs in services for a in attrs if a["key"] == "service.name"
    }
    assert names == {"nginx"}  # not the python client, not the other server


def test_non_ascii_digits_on_the_wire_raise_nothing(
    collector: CollectorProcess, grpc_sink: GrpcSink, nginx: Nginx
) -> None:
    """'²' (0xB2) in a Content-Length and in a Host port: str.isdigit() takes it,
    int() refuses it. Each follows a good request on its connection, so the
    parser is in step when it meets it; the traffic around it is still traced."""
    since = time.time_ns()
    for bad in (
        b"POST /b2-length HTTP/1.1\r\nHost: h\r\nContent-Length: \xb2\r\n\r\n",
        b"GET /b2-host HTTP/1.1\r\nHost: h:8\xb2\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", nginx.port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /b2-ok HTTP/1.1\r\nHost: h\r\n\r\n" + bad)
            sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass

    def paths() -> list[str]:
        return [
            str(s.attributes.get("url.path"))
            for s in grpc_sink.store.matching(**{"server.port": nginx.port})
            if s.kind == SERVER and s.start_ns >= since
        ]

    wait_until(lambda: paths().count("/b2-ok") == 2, 30, "the good requests' spans")
    # nginx answers the bad Host with 400: a span whose server.port is the socket's
    wait_until(lambda: "/b2-host" in paths(), 30, "the bad Host's span")
    assert collector.proc.poll() is None
    assert "Traceback" not in collector.log_path.read_text(errors="replace")


def half_closed_exchange(port: int, path: str) -> None:
    """Send a request, shut our side, and read the answer only after the server's
    FIN came: the kernel has closed the socket (TIME_WAIT) before the read."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass


def test_a_read_after_the_close_belongs_to_that_connection(
    collector: CollectorProcess, grpc_sink: GrpcSink, py_server: PythonServer
) -> None:
    """An answer read after the kernel closed the socket (its FIN came first)
    completes that connection's span, and leaves nothing behind for the socket
    that reuses the address: each fresh server connection is traced."""
    since = time.time_ns()
    rounds = 40
    for batch in range(0, rounds, 5):
        # freed sockets are reused last-in first-out: a batch of each makes the
        # fresh connections land on addresses the half-closed ones left
        for i in range(batch, batch + 5):
            half_closed_exchange(py_server.port, f"/half-closed/{i}")
        for i in range(batch, batch + 5):
            conn = http.client.HTTPConnection("127.0.0.1", py_server.port)
            conn.request("GET", f"/fresh/{i}")
            conn.getresponse().read()
            conn.close()

    def paths(kind: int) -> dict[str, object]:
        return {
            str(s.attributes.get("url.path")): s.attributes.get("http.response.status_code")
            for s in grpc_sink.store.matching(**{"server.port": py_server.port})
            if s.kind == kind and s.start_ns >= since
        }

    fresh = {f"/fresh/{i}" for i in range(rounds)}
    half_closed = {f"/half-closed/{i}" for i in range(rounds)}
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: (
                (fresh | half_closed) <= paths(SERVER).keys()
                and half_closed <= paths(CLIENT).keys()
            ),
            20,
            "every connection's spans",
        )
    assert sorted((fresh | half_closed) - paths(SERVER).keys()) == []
    answers = paths(CLIENT)
    assert {path: answers.get(path) for path in half_closed} == dict.fromkeys(half_closed, 200)
