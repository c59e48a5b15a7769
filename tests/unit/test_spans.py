"""Span building per the HTTP semantic conventions, from hand-made records."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from otel_ebpf.model import (
    TLS_STREAM,
    DnsExchange,
    DnsMessage,
    Endpoint,
    Http2Exchange,
    HttpExchange,
    HttpHead,
    Role,
    SqlExchange,
)
from otel_ebpf.processes import ProcessInfo, ProcessRegistry, _service_name_from_environ
from otel_ebpf.processors import spans
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.spans import SpanBuilder


def head(**kw: object) -> HttpHead:
    base = dict(
        is_request=True,
        method="GET",
        target="/a/b?x=1",
        status=0,
        version="1.1",
        headers={"host": "shop.example:8080", "user-agent": "ua/1"},
        start_ts=1_000,
        truncated=False,
    )
    base.update(kw)
    return HttpHead(**base)  # type: ignore[arg-type]


def conn(role: Role) -> Connection:
    c = Connection(16, role)
    if role == Role.SERVER:
        c.local, c.remote = Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 50000)
    else:
        c.local, c.remote = Endpoint("10.0.0.2", 50000), Endpoint("10.0.0.1", 8080)
    c.process = ProcessInfo(7, "app", "app", Resource({"service.name": "app"}))
    return c


def exchange(status: int | None, at: int = 0) -> HttpExchange:
    resp = (
        head(is_request=False, method="", target="", status=status, headers={}) if status else None
    )
    return HttpExchange(head(), 0, resp, 12, at + 1_000, at + 5_000)


def test_span_times_follow_a_wall_clock_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel times are monotonic; the SDKs' are wall-clock: a step of the wall
    clock (a clock set, a VM resumed) moves the spans of later requests with it,
    jitter does not."""
    builder = SpanBuilder()
    base = time.monotonic_ns()
    before = builder.build(exchange(200, base), conn(Role.SERVER))
    assert builder.follow_wall_clock() == 0  # nothing moved
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 50_000_000)
    step = builder.follow_wall_clock()
    assert 49_000_000 < step < 51_000_000
    later = time.monotonic_ns()
    after = builder.build(exchange(200, later), conn(Role.SERVER))
    assert (after.start_time or 0) - (before.start_time or 0) - (later - base) == step
    assert SpanBuilder(epoch_offset=10).follow_wall_clock() == 0  # a fixed offset stays


def test_server_span_attributes_and_times() -> None:
    span = SpanBuilder(epoch_offset=10).build(exchange(200), conn(Role.SERVER))
    assert span.kind == SpanKind.SERVER and span.name == "GET"
    assert (span.start_time, span.end_time) == (1_010, 5_010)
    assert dict(span.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/a/b",
        "url.query": "x=1",
        "url.scheme": "http",
        "network.protocol.name": "http",
        "network.protocol.version": "1.1",
        "network.transport": "tcp",
        "network.type": "ipv4",
        "server.address": "shop.example",
        "server.port": 8080,
        "network.peer.address": "10.0.0.2",
        "network.peer.port": 50000,
        "client.address": "10.0.0.2",
        "client.port": 50000,
        "user_agent.original": "ua/1",
        "http.response.status_code": 200,
        "http.response.body.size": 12,
    }
    assert span.status.status_code == StatusCode.UNSET


def test_client_span_has_url_full() -> None:
    span = SpanBuilder(0).build(exchange(200), conn(Role.CLIENT))
    assert span.kind == SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["url.full"] == "http://shop.example:8080/a/b?x=1"
    assert span.attributes["network.peer.port"] == 8080


def test_a_repeated_head_shares_its_attributes_and_no_response_or_network_fact() -> None:
    """A keep-alive connection's spans of one head share what the head and the
    connection decide (encoded once), as their first attributes; the rest is each
    span's own; another head, or the same head on another connection, is not
    shared until it repeats there."""
    builder = SpanBuilder(epoch_offset=0)
    server = conn(Role.SERVER)
    headers = {"host": "shop.example:8080", "user-agent": "ua/1"}  # one parse of one head
    x = HttpExchange(head(headers=headers), 0, head(is_request=False, status=200), 12, 1, 5)
    first = builder.build(x, server)
    second = builder.build(x._replace(response=head(is_request=False, status=503)), server)
    assert first.shared_attributes is None  # not yet seen twice
    shared = second.shared_attributes
    assert shared is not None
    assert list(second.attributes)[: len(shared)] == list(shared)
    assert {k: second.attributes[k] for k in shared} == shared
    assert "http.response.status_code" not in shared and "error.type" not in shared
    assert second.attributes["http.response.status_code"] == 503
    assert first.attributes["http.response.status_code"] == 200  # not changed by the second
    assert {k: v for k, v in first.attributes.items() if k not in shared} == {
        "http.response.status_code": 200,
        "http.response.body.size": 12,
    }
    third = builder.build(x, server)
    assert third.shared_attributes is shared  # the same object: encoded once
    other_head = HttpExchange(head(headers=dict(headers)), 0, None, 0, 1, 5)
    assert builder.build(other_head, server).shared_attributes is None
    other_path = HttpExchange(head(headers=headers, target="/c"), 0, None, 0, 1, 5)
    assert builder.build(other_path, server).attributes["url.path"] == "/c"
    assert builder.build(x, conn(Role.SERVER)).shared_attributes is None  # another connection


def test_the_plaintext_stream_of_a_tls_connection_is_https() -> None:
    tls = conn(Role.CLIENT)
    tls.sk |= TLS_STREAM  # what the OpenSSL uprobes' events are keyed by
    span = SpanBuilder(0).build(exchange(200), tls)
    assert span.attributes is not None
    assert span.attributes["url.scheme"] == "https"
    assert span.attributes["url.full"] == "https://shop.example:8080/a/b?x=1"


def test_status_rules() -> None:
    b = SpanBuilder(0)
    assert b.build(exchange(404), conn(Role.SERVER)).status.status_code == StatusCode.UNSET
    client_404 = b.build(exchange(404), conn(Role.CLIENT))
    assert client_404.status.status_code == StatusCode.ERROR
    assert client_404.attributes is not None and client_404.attributes["error.type"] == "404"
    assert b.build(exchange(503), conn(Role.SERVER)).status.status_code == StatusCode.ERROR
    none = b.build(exchange(None), conn(Role.SERVER))
    assert none.status.status_code == StatusCode.ERROR
    assert none.attributes is not None and none.attributes["error.type"] == "no_response"
    reset = conn(Role.CLIENT)
    reset.reset = True  # the connection ended with a RST: say so
    aborted = b.build(exchange(None), reset)
    assert aborted.attributes is not None
    assert aborted.attributes["error.type"] == "connection_reset"
    assert aborted.status.description == "connection reset before a response"


def test_ids_are_unique_and_valid() -> None:
    b = SpanBuilder(0)
    ctxs = [b.build(exchange(200), conn(Role.SERVER)).get_span_context() for _ in range(1000)]
    assert len({c.span_id for c in ctxs if c}) == 1000
    assert all(c and c.is_valid for c in ctxs)


def test_service_name_precedence() -> None:
    env = b"A=1\0OTEL_RESOURCE_ATTRIBUTES=team=x,service.name=from-attrs\0"
    assert _service_name_from_environ(env) == "from-attrs"
    assert _service_name_from_environ(env + b"OTEL_SERVICE_NAME=explicit\0") == "explicit"
    assert _service_name_from_environ(b"PATH=/bin\0") is None


def test_a_process_gone_from_proc_takes_its_service_name_from_its_exec(tmp_path: Path) -> None:
    kernel = {42: "short-curl"}
    registry = ProcessRegistry(proc=str(tmp_path), exec_service_name=kernel.get)
    assert registry.get(42, b"curl\0").service_name == "short-curl"
    assert registry.get(43, b"curl\0").service_name == "curl"  # none set: its name


def test_sql_span_is_sanitised_unless_raw_is_asked_for() -> None:
    x = SqlExchange(
        "postgresql",
        "SELECT * FROM users WHERE email = 'a@b.c'",
        "shop",
        1_000,
        2_000,
        True,
        "42501",
        "permission denied",
    )
    span = SpanBuilder(epoch_offset=0).build(x, conn(Role.CLIENT))
    assert span is not None and span.kind == SpanKind.CLIENT and span.name == "SELECT users"
    attrs = dict(span.attributes or {})
    assert attrs["db.query.text"] == "SELECT * FROM users WHERE email = ?"
    assert (attrs["db.namespace"], attrs["db.collection.name"]) == ("shop", "users")
    assert attrs["db.response.status_code"] == attrs["error.type"] == "42501"
    assert span.status.status_code == StatusCode.ERROR
    raw = SpanBuilder(epoch_offset=0, raw_db_query_text=True).build(x, conn(Role.CLIENT))
    assert raw is not None and (raw.attributes or {})["db.query.text"] == x.query
    assert SpanBuilder().build(x, conn(Role.SERVER)) is None  # the database's own side


def test_grpc_status_errors_differ_by_side() -> None:
    x = Http2Exchange(
        1,
        "POST",
        "/shop.Cart/Add",
        "cart:50051",
        "http",
        {"content-type": "application/grpc"},
        200,
        5,
        "no such item",
        10,
        0,
        1_000,
        3_000,
        False,
        True,
    )
    client = SpanBuilder().build(x, conn(Role.CLIENT))
    server = SpanBuilder().build(x, conn(Role.SERVER))
    assert client is not None and server is not None
    assert client.name == server.name == "shop.Cart/Add"
    assert (client.attributes or {})["rpc.response.status_code"] == "NOT_FOUND"
    assert client.status.status_code == StatusCode.ERROR  # the caller's error
    assert server.status.status_code == StatusCode.UNSET  # not the server's (conventions)
    assert (server.attributes or {})["client.address"] == "10.0.0.2"


def test_dns_timeout_span() -> None:
    query = DnsMessage(7, False, "NOERROR", "svc.example", "AAAA", ())
    x = DnsExchange(query, None, 1_000, 5_000_001_000, "udp", timed_out=True)
    span = SpanBuilder().build(x, conn(Role.CLIENT))
    assert span is not None and span.name == "DNS AAAA"
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == "timeout" and attrs["network.transport"] == "udp"
    assert attrs["dns.question.name"] == "svc.example"


def test_host_headers_kept_parsed_are_bounded_and_each_named_rightly() -> None:
    """Each Host header is parsed once and kept (a connection repeats its own),
    at most MAX_HOSTS of them; a header seen again after the table was
    forgotten is parsed afresh, alike."""
    builder = SpanBuilder(0)
    for i in range(spans.MAX_HOSTS + 10):
        request = head(headers={"host": f"user@h{i}:{1000 + i}"})
        built = builder.build(HttpExchange(request, 0, None, 0, 1_000, 5_000), conn(Role.CLIENT))
        assert built is not None
        attributes = built.attributes or {}
        assert (attributes["server.address"], attributes["server.port"]) == (f"h{i}", 1000 + i)
        assert attributes["url.full"] == f"http://h{i}:{1000 + i}/a/b?x=1"  # no userinfo
    assert len(builder._hosts) <= spans.MAX_HOSTS
