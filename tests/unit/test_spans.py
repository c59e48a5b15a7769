"""Span building per the HTTP semantic conventions, from hand-made records."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, StatusCode

from otel_ebpf.model import Endpoint, HttpExchange, HttpHead, Role
from otel_ebpf.processes import ProcessInfo, _service_name_from_environ
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.processors.streams import Connection


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
    c = Connection(1, role)
    if role == Role.SERVER:
        c.local, c.remote = Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 50000)
    else:
        c.local, c.remote = Endpoint("10.0.0.2", 50000), Endpoint("10.0.0.1", 8080)
    c.process = ProcessInfo(7, "app", "app --x", "app", Resource({"service.name": "app"}))
    return c


def exchange(status: int | None) -> HttpExchange:
    resp = (
        head(is_request=False, method="", target="", status=status, headers={}) if status else None
    )
    return HttpExchange(head(), 0, resp, 12, 1_000, 5_000)


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
