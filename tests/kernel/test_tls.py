"""HTTPS through the OpenSSL uprobes: nginx, curl, ab, Python's ssl module, a client
with its own copy of libssl started after the collector, OpenSSL 1.1 and 3.x from
wheels, and a Go client whose TLS the collector must say it cannot read."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from db_spans import settle
from harness import (
    HERE,
    CollectorProcess,
    Nginx,
    Postgres,
    PythonServer,
    build_go,
    wait_until,
)
from otel_ebpf.receivers.tls import mapped_paths
from otlp_sink import CLIENT, SERVER, GrpcSink, Span
from test_nginx import expect_exactly

# A keep-alive HTTPS client on Python's ssl module (the system libssl, or the one
# LD_LIBRARY_PATH names): waits `pause` seconds after the handshake, then sends
# each path, with a traceparent header when one is given.
CLIENT_SCRIPT = textwrap.dedent(
    """
    import http.client, ssl, sys, time
    port, pause, traceparent, paths = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
    context = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.connect()
    time.sleep(pause)
    for path in paths:
        conn.request("GET", path, headers={"traceparent": traceparent} if traceparent else {})
        conn.getresponse().read()
    conn.close()
    """
)


def python_client(
    port: int,
    paths: list[str],
    service: str,
    pause: float = 0.0,
    traceparent: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, str(port), str(pause), traceparent, *paths],
        env={**os.environ, "OTEL_SERVICE_NAME": service, **(env or {})},
    )


def check_https(spans: list[Span], paths: list[tuple[str, int]]) -> None:
    for span, (path, status) in zip(spans, paths, strict=True):
        assert span.attributes["url.scheme"] == "https"
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["url.path"] == path
        assert span.attributes["http.response.status_code"] == status


def test_nginx_over_https_with_curl_one_span_per_request_each_side(
    collector: CollectorProcess, grpc_sink: GrpcSink, nginx: Nginx
) -> None:
    since = time.time_ns()
    paths = [("/index.html", 200), ("/missing", 404), ("/fail", 500)] * 3
    args = [a for p, _ in paths for a in ("-o", "/dev/null", nginx.https_url(p))]
    subprocess.run(["curl", "-sk", *args], check=True)
    servers = expect_exactly(grpc_sink.store, nginx.tls_port, SERVER, "nginx", len(paths), since)
    clients = expect_exactly(grpc_sink.store, nginx.tls_port, CLIENT, "curl", len(paths), since)
    check_https(servers, paths)
    check_https(clients, paths)
    assert all(c.trace_id == s.trace_id for c, s in zip(clients, servers, strict=True))
    assert servers[0].attributes["server.port"] == nginx.tls_port  # TLS spans keep the tuple


def test_nginx_over_https_with_ab(
    collector: CollectorProcess, grpc_sink: GrpcSink, nginx: Nginx
) -> None:
    since = time.time_ns()
    out = subprocess.run(
        ["ab", "-n", "200", "-c", "4", nginx.https_url("/index.html")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "Complete requests:      200" in out and "Failed requests:        0" in out
    servers = expect_exactly(grpc_sink.store, nginx.tls_port, SERVER, "nginx", 200, since)
    clients = expect_exactly(grpc_sink.store, nginx.tls_port, CLIENT, "ab", 200, since)
    check_https(servers, [("/index.html", 200)] * 200)
    check_https(clients, [("/index.html", 200)] * 200)


def test_python_ssl_keepalive_and_a_traceparent_over_tls(
    collector: CollectorProcess, grpc_sink: GrpcSink, tls_server: PythonServer
) -> None:
    since = time.time_ns()
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    paths = ["/status/200", "/status/404", "/big/50000", "/status/200"]
    client = python_client(
        tls_server.port, paths, "py-tls-client", traceparent=f"00-{trace}-{parent}-01"
    )
    assert client.wait(30) == 0
    port = tls_server.port
    servers = expect_exactly(grpc_sink.store, port, SERVER, "py-tls", len(paths), since)
    clients = expect_exactly(grpc_sink.store, port, CLIENT, "py-tls-client", len(paths), since)
    want = [("/status/200", 200), ("/status/404", 404), ("/big/50000", 200), ("/status/200", 200)]
    check_https(servers, want)
    check_https(clients, want)
    for c, s in zip(clients, servers, strict=True):
        assert c.trace_id == s.trace_id == trace  # the context sent over TLS was read
        # Both are children of the span the sending app named (the eBPF client span
        # stands in for that app's own, as for plain HTTP).
        assert c.parent_span_id == s.parent_span_id == parent
    assert clients[2].attributes["otel_ebpf.tcp.bytes_received"] >= 50_000


def test_postgresql_over_tls_through_the_same_parser(
    collector: CollectorProcess, grpc_sink: GrpcSink, tmp_path: Path
) -> None:
    """psql and the server both on the system libssl; sslmode=require, so every
    statement after the SSLRequest travels encrypted."""
    pg = Postgres(tmp_path / "pg", tls=True)
    try:
        since = time.time_ns()
        psql = [str(Postgres.BIN / "psql"), f"{pg.dsn} sslmode=require", "-X", "-A", "-t"]
        out = subprocess.run(
            [
                *psql,
                *("-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
                *("-c", "SELECT 42"),
                *("-c", "SELECT * FROM no_such_table"),
            ],
            capture_output=True,
            text=True,
        )
        assert out.stdout.split()[:2] == ["t", "42"], out.stderr  # TLS, really
        spans = settle(grpc_sink, "postgresql", pg.port, since, 3)
    finally:
        pg.stop()
    texts = sorted(s.attributes["db.query.text"] for s in spans)
    assert texts == [
        "SELECT * FROM no_such_table",
        "SELECT ?",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    ]
    failed = [s for s in spans if s.status_code == 2]
    assert [s.attributes["db.response.status_code"] for s in failed] == ["42P01"]
    assert all(s.service == "psql" and s.attributes["db.namespace"] == "postgres" for s in spans)


# Database drivers' wheels bundle their own OpenSSL: psycopg2-binary 2.9.5's
# 1.1.1 (Debian 12 ships only 3.x) and psycopg-binary 3.3's 3.x (whose
# ssl_write_internal takes a flags argument before the written count), both
# probed on the internal read and write functions as the system's 3.0 is. The
# client shows itself
# with a plain connection, then waits for a line on stdin (the collector probing
# its libssl) before it speaks TLS.
WHEEL_OPENSSL_CLIENT = textwrap.dedent(
    """
    import importlib, socket, sys
    driver, library, dsn, port = sys.argv[1:5]
    db = importlib.import_module(driver)
    assert library in open("/proc/self/maps").read(), f"no {library}"
    socket.create_connection(("127.0.0.1", int(port))).close()
    sys.stdin.readline()
    conn = db.connect(dsn + " sslmode=require")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert cur.fetchone() == (True,)
    cur.execute("SELECT 7")
    conn.close()
    """
)


def probing(collector: CollectorProcess, name: str) -> bool:
    """Whether the collector's last word on the libssl file `name` is that it reads it."""
    said = [
        line
        for line in collector.log_path.read_text().splitlines()
        if "TLS:" in line and name in line
    ]
    return bool(said) and "reading plaintext" in said[-1]


@pytest.mark.parametrize(
    ("driver", "library"),
    [
        ("psycopg2", "psycopg2_binary.libs/libssl-3a880ada.so.1.1"),
        ("psycopg", "psycopg_binary.libs/libssl-6a9b88ec.so.3"),
    ],
)
def test_openssl_bundled_by_a_python_wheel(
    collector: CollectorProcess, grpc_sink: GrpcSink, tmp_path: Path, driver: str, library: str
) -> None:
    pg = Postgres(tmp_path / "pg", tls=True)
    service = f"py-{driver}-tls"
    try:
        since = time.time_ns()
        client = subprocess.Popen(
            [sys.executable, "-c", WHEEL_OPENSSL_CLIENT, driver, library, pg.dsn, str(pg.port)],
            stdin=subprocess.PIPE,
            env={**os.environ, "OTEL_SERVICE_NAME": service},
        )
        assert client.stdin is not None
        # Probed for this client: an earlier test's process may have had the file
        # probed, and the sweep detach it once that process was gone. Once this
        # client maps it, it stays probed until the client exits.
        wait_until(
            lambda: any(p.endswith(library) for p in mapped_paths(client.pid)),
            30,
            f"the client mapping {library}",
        )
        wait_until(
            lambda: probing(collector, Path(library).name), 30, f"the collector probing {library}"
        )
        client.stdin.write(b"go\n")
        client.stdin.close()
        assert client.wait(30) == 0
        spans = settle(grpc_sink, "postgresql", pg.port, since, 2)
    finally:
        pg.stop()
    texts = sorted(s.attributes["db.query.text"] for s in spans)
    assert texts == ["SELECT ?", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"]
    assert all(s.service == service for s in spans)


def test_a_client_in_another_mount_namespace_started_after_the_collector(
    collector: CollectorProcess, grpc_sink: GrpcSink, tls_server: PythonServer, tmp_path: Path
) -> None:
    """A container stand-in: a mount namespace where the system libssl path holds a
    copy (another file, as a container image's own library is). The collector finds
    it through /proc/PID/root when the process first uses the network, and probes it."""
    system = Path(ssl_library())
    copy = tmp_path / "libssl.so.3"
    shutil.copy(system, copy)
    since = time.time_ns()
    paths = ["/status/200", "/status/201", "/status/202"]
    argv = [sys.executable, "-c", CLIENT_SCRIPT, str(tls_server.port), "3.0", "", *paths]
    inside = f"mount --bind {copy} {system} && exec {shlex.join(argv)}"
    client = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inside],
        env={**os.environ, "OTEL_SERVICE_NAME": "late-tls-client"},
    )

    def maps_the_copy() -> bool:
        maps = Path(f"/proc/{client.pid}/maps").read_text()
        return any(
            line.endswith(str(system)) and int(line.split()[4]) == copy.stat().st_ino
            for line in maps.splitlines()
        )

    wait_until(maps_the_copy, 10, "the client mapping the copy under the system path")
    assert client.wait(30) == 0
    clients = expect_exactly(
        grpc_sink.store, tls_server.port, CLIENT, "late-tls-client", len(paths), since
    )
    check_https(clients, [("/status/200", 200), ("/status/201", 201), ("/status/202", 202)])
    log = collector.log_path.read_text()
    assert f"/proc/{collector.proc.pid}/fd/" in log  # held open: the namespace may go first


def ssl_library() -> str:
    """The system libssl as this process maps it (not a wheel's bundled copy)."""
    import ssl as _ssl  # noqa: F401  - maps the system libssl into this process

    return next(
        p
        for p in mapped_paths(os.getpid())
        if Path(p).name.startswith("libssl.so") and "-packages/" not in p
    )


def test_a_go_tls_client_is_reported_as_not_visible(
    collector: CollectorProcess, grpc_sink: GrpcSink, tls_server: PythonServer, tmp_path: Path
) -> None:
    binary = build_go(HERE / "go_tls_client" / "main.go", tmp_path / "go_tls_client")
    since = time.time_ns()
    subprocess.run(
        [str(binary), f"https://127.0.0.1:{tls_server.port}/status/200", "3", "3"], check=True
    )
    wait_until(
        lambda: (
            "TLS not visible" in collector.log_path.read_text()
            and "go_tls_client" in collector.log_path.read_text()
        ),
        30,
        "the log line naming the Go client",
    )
    line = next(
        x
        for x in collector.log_path.read_text().splitlines()
        if "go_tls_client" in x and "TLS not visible" in x
    )
    assert "Go crypto/tls" in line
    assert collector.telemetry()["tls_not_visible"] >= 1
    # The server's side is OpenSSL (Python's ssl): its spans are there.
    expect_exactly(grpc_sink.store, tls_server.port, SERVER, "py-tls", 3, since)
