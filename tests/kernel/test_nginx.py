"""nginx from Debian, driven by curl and ab: N requests in, exactly N spans out per side."""

from __future__ import annotations

import os
import re
import subprocess
import time

from harness import CollectorProcess, Nginx, ab, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink, HttpSink, Span, SpanStore

SETTLE_S = 1.0  # two batch intervals: long enough for any extra span to show up


def spans_for(store: SpanStore, port: int, kind: int, service: str, since_ns: int) -> list[Span]:
    return [
        s
        for s in store.matching(**{"server.port": port})
        if s.kind == kind and s.service == service and s.start_ns >= since_ns
    ]


def expect_exactly(
    store: SpanStore, port: int, kind: int, service: str, n: int, since_ns: int
) -> list[Span]:
    """Wait for n spans of this test, then make sure no extra one follows."""

    def count() -> int:
        return len(spans_for(store, port, kind, service, since_ns))

    try:
        wait_until(lambda: count() >= n, 30, f"{n} {service} spans")
    except AssertionError as exc:
        seen = {(x.service, x.kind) for x in store.matching(**{"server.port": port})}
        raise AssertionError(f"{exc}; received {count()}; at that port: {seen}") from None
    time.sleep(SETTLE_S)
    got = spans_for(store, port, kind, service, since_ns)
    assert len(got) == n, f"expected exactly {n} {service} spans, got {len(got)}"
    return sorted(got, key=lambda s: s.start_ns)


PATHS = [
    ("/index.html", 200),
    ("/missing", 404),
    ("/fail", 500),
    ("/bad-upstream", 502),
    ("/big.bin", 200),
    ("/index.html?x=1", 200),
]


def test_curl_keepalive_against_nginx_over_otlp_grpc(
    collector: CollectorProcess, grpc_sink: GrpcSink, nginx: Nginx
) -> None:
    since = time.time_ns()
    urls = [nginx.url(p) for p, _ in PATHS] * 3
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-w",
            "%{http_code} %{time_total}\\n",
            *(arg for u in urls for arg in ("-o", "/dev/null", u)),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    codes, times = [int(c) for c in out[::2]], [float(t) for t in out[1::2]]
    assert codes == [c for _, c in PATHS] * 3

    servers = expect_exactly(grpc_sink.store, nginx.port, SERVER, "nginx", len(urls), since)
    clients = expect_exactly(grpc_sink.store, nginx.port, CLIENT, "curl", len(urls), since)
    for spans in (servers, clients):
        for span, (target, status), client_time in zip(spans, PATHS * 3, times, strict=True):
            path, _, query = target.partition("?")
            assert span.name == "GET"
            assert span.attributes["http.request.method"] == "GET"
            assert span.attributes["url.path"] == path
            assert span.attributes.get("url.query", "") == query
            assert span.attributes["http.response.status_code"] == status
            assert span.attributes["network.protocol.version"] == "1.1"
            assert span.attributes["user_agent.original"].startswith("curl/")
            assert 0 < span.duration_s <= client_time
    for span, (_, status) in zip(servers, PATHS * 3, strict=True):
        assert span.status_code == (2 if status >= 500 else 0)  # 4xx is not a server error
        assert span.attributes["client.address"] == "127.0.0.1"
        assert span.resource["process.executable.name"] == "nginx"
    for span, (_, status) in zip(clients, PATHS * 3, strict=True):
        assert span.status_code == (2 if status >= 400 else 0)
        assert span.attributes["url.full"].startswith(f"http://127.0.0.1:{nginx.port}/")
        assert span.attributes["network.peer.port"] == nginx.port
    big = [s for s in clients if s.attributes["url.path"] == "/big.bin"]
    assert all(s.attributes["http.response.body.size"] == 300_000 for s in big)


def test_ab_keepalive_against_nginx_over_otlp_http(
    collector: CollectorProcess, http_sink: HttpSink, nginx: Nginx
) -> None:
    n = 400
    since = time.time_ns()
    out = ab(nginx.url("/index.html"), n, 4)
    longest_ms = float(re.search(r"100%\s+(\d+)", out).group(1))  # type: ignore[union-attr]

    servers = expect_exactly(http_sink.store, nginx.port, SERVER, "nginx", n, since)
    clients = expect_exactly(http_sink.store, nginx.port, CLIENT, "ab", n, since)
    for span in servers + clients:
        assert span.attributes["url.path"] == "/index.html"
        assert span.attributes["http.response.status_code"] == 200
        # ab rounds to whole milliseconds: allow that rounding, nothing more.
        assert 0 < span.duration_s <= (longest_ms + 1) / 1000
    assert len({s.span_id for s in servers + clients}) == 2 * n
    assert collector.telemetry()["events_lost"] == 0


def test_a_client_that_exits_at_once_keeps_its_service_name(
    collector: CollectorProcess, grpc_sink: GrpcSink, nginx: Nginx
) -> None:
    """curl is gone in milliseconds, before /proc/<pid>/environ can be read: the
    kernel keeps OTEL_SERVICE_NAME from its execve."""
    since = time.time_ns()
    env = {**os.environ, "OTEL_SERVICE_NAME": "short-curl"}
    for i in range(6):
        subprocess.run(["curl", "-sf", "-o", "/dev/null", nginx.url(f"/short/{i}")], env=env)

    def clients() -> list[Span]:
        return [
            s
            for s in grpc_sink.store.matching(**{"server.port": nginx.port})
            if s.kind == CLIENT and s.start_ns >= since
        ]

    wait_until(lambda: len(clients()) >= 6, 30, "6 curl spans")
    assert sorted(s.service for s in clients()) == ["short-curl"] * 6
