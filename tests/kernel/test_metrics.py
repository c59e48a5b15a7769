"""Metrics exported over real OTLP: RED histograms, route templates, TCP health,
the service graph, and network facts on spans."""

from __future__ import annotations

import http.client
import socket
import struct
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import CollectorProcess, Nginx, PythonServer, ab, free_port, wait_until
from otlp_sink import CLIENT, GrpcSink, Point

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def get(port: int, paths: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for path in paths:
        conn.request("GET", path)
        conn.getresponse().read()
    conn.close()


def settle(read: object, want: object, what: str, timeout: float = 30) -> None:
    wait_until(lambda: read() == want, timeout, what)  # type: ignore[operator]


def test_red_histograms_count_requests_by_method_route_and_status(
    collector: CollectorProcess, grpc_sink: GrpcSink, py_server: PythonServer
) -> None:
    def counts() -> dict[tuple[str, str, int], int]:
        series = grpc_sink.metrics.series(
            "http.server.request.duration", **{"service.name": "py-backend"}
        )
        out: dict[tuple[str, str, int], int] = {}
        for attrs, point in series.items():
            a = dict(attrs)
            if a.get("http.route") == "/status/{id}":
                key = (a["http.request.method"], a["http.route"], a["http.response.status_code"])
                out[key] = int(point.value)
        return out

    before = counts()
    mix = {200: 20, 404: 10, 500: 5}
    get(py_server.port, [f"/status/{code}" for code, n in mix.items() for _ in range(n)])
    want = {
        ("GET", "/status/{id}", code): before.get(("GET", "/status/{id}", code), 0) + n
        for code, n in mix.items()
    }
    settle(counts, want, "RED counts per status")
    assert "py-backend" in grpc_sink.metrics.services  # a resource per traced service
    point = next(iter(grpc_sink.metrics.series("http.server.request.duration").values()))
    assert point.bounds == HTTP_BUCKETS  # the conventions' advisory boundaries, in seconds


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_red_counts_every_request_while_the_ring_buffer_overflows(
    tmp_path: Path, nginx: Nginx, scheme: str
) -> None:
    """A one-page ring buffer under ab -k loses most events, and spans with them;
    HTTP/1 requests are counted in the kernel, so RED still counts each, on both
    sides, and so does the service graph. HTTPS too: its plaintext is counted as
    the OpenSSL uprobes read it."""
    sink = GrpcSink()
    collector = CollectorProcess(
        tmp_path / "collector",
        {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "insecure": True}},
        metrics=["otlp"],
        extra_env={"OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_EBPF_RING_BUFFER_PAGES": "1"},
    )
    try:
        # nginx seen answering once: the graph names it, not its address
        urllib.request.urlopen(nginx.url("/index.html"), timeout=10).read()
        https = scheme == "https"
        url = nginx.https_url("/index.html") if https else nginx.url("/index.html")
        port = nginx.tls_port if https else nginx.port
        n = 6_000 if not https else 3_000
        ab(url, n, 8)

        def counted() -> dict[tuple[object, ...], int]:
            series = sink.metrics.series(
                "http.server.request.duration", **{"service.name": "nginx"}
            )
            out: dict[tuple[object, ...], int] = {}
            for attrs, point in series.items():  # HTTP/1.0 (ab) and 1.1 (urllib) apart
                a = dict(attrs)
                if a["url.scheme"] != scheme:
                    continue
                key = (a["http.request.method"], a["http.route"], a["http.response.status_code"])
                out[key] = out.get(key, 0) + int(point.value)
            return out

        settle(counted, {("GET", "/index.html", 200): n + (not https)}, "every request counted")

        def client_side() -> tuple[int, int]:
            requests = sink.metrics.series("http.client.request.duration", **{"service.name": "ab"})
            edges = sink.metrics.series(
                "traces_service_graph_request_total", client="ab", server="nginx"
            )
            return (
                sum(int(p.value) for a, p in requests.items() if dict(a)["server.port"] == port),
                sum(int(p.value) for p in edges.values()),
            )

        settle(client_side, (n, n), "every request of ab counted, and on its edge")
        telemetry = collector.telemetry()
        assert telemetry["events_lost"] > 0  # what this test is about: the ring overflowed
        assert telemetry["events_retried"] > 0  # the spare ring took some of what it refused
        assert telemetry["spans_built"] < 2 * n
    finally:
        collector.stop()
        sink.stop()


def test_the_prometheus_endpoint_serves_red_counts(tmp_path: Path, nginx: Nginx) -> None:
    """A metrics pipeline to Prometheus: a scraper reads nginx's requests, each
    counted once, from the collector's own endpoint in the text format."""
    port = free_port()
    collector = CollectorProcess(
        tmp_path / "collector",
        {"prometheus": {"endpoint": f"127.0.0.1:{port}"}},
        metrics=["prometheus"],
    )

    def scraped() -> int:
        url = f"http://127.0.0.1:{port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return sum(
            int(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "http_server_request_duration_seconds_count"
            and sample.labels.get("service_name") == "nginx"
        )

    try:
        ab(nginx.url("/index.html"), 200, 4)
        settle(scraped, 200, "nginx's requests on the scrape")
    finally:
        collector.stop()


def test_red_counts_pipelined_and_split_requests_once_each(
    collector: CollectorProcess, grpc_sink: GrpcSink, py_server: PythonServer
) -> None:
    """The kernel counts a request whose read began with its request line; the
    rest (pipelined behind it) come from spans. Either way, once."""

    def counts() -> dict[str, int]:
        series = grpc_sink.metrics.series(
            "http.server.request.duration", **{"service.name": "py-backend"}
        )
        out: dict[str, int] = {}
        for attrs, point in series.items():
            route = str(dict(attrs).get("http.route"))
            out[route] = out.get(route, 0) + int(point.value)
        return out

    before = counts()
    with socket.create_connection(("127.0.0.1", py_server.port)) as sock:
        sock.sendall(b"".join(b"GET /pipe/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
        received = b""
        while received.count(b"HTTP/1.") < 3:
            received += sock.recv(65536)
        # The head ends in a later read (most likely: if the server reads both
        # parts at once, the request is still to be counted once).
        sock.sendall(b"GET /split/1 HTTP/1.1\r\nHo")
        time.sleep(0.05)
        sock.sendall(b"st: x\r\n\r\n")
        while b"HTTP/1." not in sock.recv(65536):
            pass
    # A request after these, on a connection of its own: once it is counted, so
    # is everything before it, and a double count would be there too.
    get(py_server.port, ["/marker/1"])
    routes = (("/pipe/{id}", 3), ("/split/{id}", 1), ("/marker/{id}", 1))
    want = {route: before.get(route, 0) + n for route, n in routes}
    settle(lambda: {r: counts().get(r, 0) for r in want}, want, "each request counted once")


def test_route_templates_keep_cardinality_under_the_cap(
    collector: CollectorProcess, grpc_sink: GrpcSink, py_server: PythonServer
) -> None:
    # End to end on 2,000 ids (the unit tests push 10,000 through the same code).
    ids = [f"/users/{i}/orders/{i * 7919:012x}" for i in range(2_000)]
    words = [f"/page-{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(150)]
    get(py_server.port, ids + words)

    def routes() -> set[str]:
        series = grpc_sink.metrics.series(
            "http.server.request.duration", **{"service.name": "py-backend"}
        )
        return {dict(a).get("http.route", "") for a in series}

    wait_until(lambda: "/{other}" in routes(), 60, "the overflow route")
    got = routes()
    assert "/users/{id}/orders/{id}" in got
    assert len(got) <= 100 + 1  # max_per_service (default 100) plus the overflow series


def test_refused_connects_and_resets_are_counted_on_the_right_side(tmp_path: Path) -> None:
    """A collector of its own: the session's has seen hundreds of peers by now, and
    a newcomer among many in ten seconds is counted in its service's overflow
    series (peer `_other`), not under its port."""
    sink = GrpcSink()
    collector = CollectorProcess(
        tmp_path / "collector",
        {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "insecure": True}},
        metrics=["otlp"],
        extra_env={"OTEL_METRIC_EXPORT_INTERVAL": "1000"},
    )
    try:
        refuse_and_reset(sink)
    finally:
        assert collector.stop() == 0
        sink.stop()


def refuse_and_reset(sink: GrpcSink) -> None:
    closed = free_port()
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", closed), timeout=2)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    for _ in range(2):  # an aborting server: SO_LINGER 0 sends a RST on close
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        client.sendall(b"ping")
        accepted.recv(4)
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()
        time.sleep(0.1)
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        client.close()
    server.close()

    def total(name: str, **attrs: object) -> int:
        return int(sum(p.value for p in sink.metrics.series(name, **attrs).values()))

    failure = {"server.port": closed, "otel_ebpf.tcp.failure": "refused"}
    wait_until(lambda: total("otel_ebpf.tcp.connections.failed", **failure) == 3, 30, "refused")
    received = {"server.port": port, "network.io.direction": "receive", "direction": "active"}
    wait_until(lambda: total("otel_ebpf.tcp.resets", **received) == 2, 30, "client resets")
    aborted = {"server.port": port, "direction": "active", "otel_ebpf.tcp.failure": "reset"}
    wait_until(lambda: total("otel_ebpf.tcp.connections.failed", **aborted) == 2, 30, "aborted")
    sent = {"server.port": port, "network.io.direction": "transmit", "direction": "passive"}
    wait_until(lambda: total("otel_ebpf.tcp.resets", **sent) == 2, 30, "server resets")


def test_live_connections_report_bytes_before_they_close_and_only_once(
    collector: CollectorProcess, grpc_sink: GrpcSink, py_server: PythonServer
) -> None:
    served = {
        "service.name": "py-backend",
        "server.port": py_server.port,
        "direction": "passive",
        "network.io.direction": "transmit",
    }

    def sent() -> int:
        series = grpc_sink.metrics.series("otel_ebpf.tcp.bytes", **served)
        return int(sum(p.value for p in series.values()))

    base = sent()
    conn = http.client.HTTPConnection("127.0.0.1", py_server.port, timeout=10)
    for _ in range(2):
        conn.request("GET", "/big/500000")
        conn.getresponse().read()
    # The connection stays open: its bytes come from the periodic read of the kernel map.
    try:
        wait_until(lambda: sent() >= base + 1_000_000, 30, "bytes of a connection still open")
    except AssertionError:
        seen = grpc_sink.metrics.series("otel_ebpf.tcp.bytes", **{"server.port": py_server.port})
        raise AssertionError(f"{base=}; series of that port: {seen}") from None
    conn.close()
    time.sleep(3)  # several reads and exports after the close
    assert base + 1_000_000 <= sent() < base + 1_010_000  # the close added headers, not again


def test_service_graph_names_both_ends(
    collector: CollectorProcess, grpc_sink: GrpcSink, chain: tuple[PythonServer, PythonServer]
) -> None:
    middle, _ = chain
    for _ in range(5):
        with urllib.request.urlopen(f"http://127.0.0.1:{middle.port}/chain", timeout=10) as r:
            r.read()

    def edge(client: str, server: str) -> Point | None:
        series = grpc_sink.metrics.series(
            "traces_service_graph_request_total", client=client, server=server
        )
        return next(iter(series.values()), None)

    wait_until(lambda: (edge("svc-b", "svc-c") or Point(0)).value >= 5, 30, "svc-b -> svc-c")
    assert grpc_sink.metrics.series(
        "traces_service_graph_request_server_seconds", client="svc-b", server="svc-c"
    )


def test_client_spans_carry_tcp_facts_and_the_time_split(
    collector: CollectorProcess, grpc_sink: GrpcSink, py_server: PythonServer
) -> None:
    since = time.time_ns()
    get(py_server.port, ["/sleep/300", "/big/200000"])
    wait_until(lambda: len(_clients(grpc_sink, py_server.port, since)) >= 2, 30, "two client spans")
    slow, big = sorted(_clients(grpc_sink, py_server.port, since), key=lambda s: s.start_ns)
    assert slow.attributes["otel_ebpf.tcp.connection.new"] is True
    assert big.attributes["otel_ebpf.tcp.connection.new"] is False  # same keep-alive connection
    assert big.attributes["otel_ebpf.tcp.bytes_received"] > 200_000
    assert big.attributes["otel_ebpf.tcp.retransmits"] == 0
    # The server took 300 ms of the client's time; the rest is network and queues.
    server, network = (
        slow.attributes["otel_ebpf.time.server"],
        slow.attributes["otel_ebpf.time.network"],
    )
    assert server >= 0.3 and network < server
    assert abs((server + network) - slow.duration_s) < 1e-6


def _clients(sink: GrpcSink, port: int, since: int) -> list:  # type: ignore[type-arg]
    return [
        s
        for s in list(sink.store.spans)
        if s.kind == CLIENT
        and s.start_ns >= since
        and s.attributes.get("server.port") == port
        and s.attributes.get("url.path", "").startswith(("/sleep", "/big"))
    ]
