"""Console and OTLP-JSON exporters, process selection and privilege checks (pure logic)."""

from __future__ import annotations

import io
import json

import pytest
from opentelemetry.sdk.resources import Resource

from otel_ebpf.exporters import ConsoleLineExporter, otlp_json
from otel_ebpf.model import Endpoint, HttpExchange, HttpHead, Role
from otel_ebpf.privileges import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    missing_capabilities,
)
from otel_ebpf.processes import ProcessInfo
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.selection import Selector, parse_ports
from otel_ebpf.processors.spans import SpanBuilder


def a_span():  # type: ignore[no-untyped-def]
    req = HttpHead(True, "POST", "/x?y=1", 0, "1.1", {}, 0, False)
    resp = HttpHead(False, "", "", 500, "1.1", {}, 0, False)
    c = Connection(16, Role.SERVER)
    c.local, c.remote = Endpoint("127.0.0.1", 80), Endpoint("127.0.0.1", 4000)
    c.process = ProcessInfo(9, "srv", "srv", Resource({"service.name": "srv", "process.pid": 9}))
    return SpanBuilder(1_700_000_000_000_000_000).build(
        HttpExchange(req, 0, resp, 0, 0, 2_500_000), c
    )


def test_console_line_is_readable() -> None:
    out = io.StringIO()
    ConsoleLineExporter("basic", out).export([a_span()])
    assert (
        out.getvalue()
        == "2023-11-14T22:13:20.000Z SERVER srv[9] POST /x?y=1 500 2.50ms <- 127.0.0.1:4000 ERROR\n"
    )


def test_otlp_json_uses_hex_ids() -> None:
    span = a_span()
    body = json.loads(otlp_json([span]))
    (out,) = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
    ctx = span.get_span_context()
    assert ctx is not None
    assert out["traceId"] == f"{ctx.trace_id:032x}"
    assert out["spanId"] == f"{ctx.span_id:016x}"
    assert out["kind"] == 2
    assert body["resourceSpans"][0]["resource"]["attributes"][0]["key"] == "service.name"


def test_parse_ports() -> None:
    assert parse_ports("80, 443,8000-8999,") == [(80, 80), (443, 443), (8000, 8999)]
    for bad in ("0", "70000", "9-3", "http"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def test_selector() -> None:
    everyone = Selector()
    assert everyone.process_selected(1, "anything") and everyone.port_selected(1)
    picky = Selector(
        include_executables=("nginx*",), exclude_pids=frozenset({42}), ports=((80, 80),)
    )
    assert picky.process_selected(1, "nginx")
    assert not picky.process_selected(42, "nginx")
    assert not picky.process_selected(2, "redis-server")
    assert picky.port_selected(80) and not picky.port_selected(81)
    assert not Selector(exclude_executables=("ssh*",)).process_selected(3, "sshd")


def test_privileges_from_capability_bits() -> None:
    assert missing_capabilities(0) == ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]
    assert missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE)) == []
    assert missing_capabilities((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE)) == []
