"""One trace per request across uninstrumented processes on one node (socket and
thread context), and joining the trace a request carries on the wire."""

from __future__ import annotations

import http.client
import os
import random
import time
from collections import defaultdict

from harness import CollectorProcess, PythonServer, get_many, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink, Span

CLIENT_SERVICE = os.environ.get("OTEL_SERVICE_NAME") or os.path.basename(
    os.readlink("/proc/self/exe")
)


def traces_since(sink: GrpcSink, ports: set[int], since: int) -> dict[str, list[Span]]:
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in list(sink.store.spans):
        if span.start_ns >= since and span.attributes.get("server.port") in ports:
            by_trace[span.trace_id].append(span)
    return by_trace


def wait_for_spans(sink: GrpcSink, ports: set[int], since: int, n: int) -> dict[str, list[Span]]:
    def count() -> int:
        return sum(len(v) for v in traces_since(sink, ports, since).values())

    wait_until(lambda: count() >= n, 30, f"{n} spans")
    time.sleep(1.0)
    traces = traces_since(sink, ports, since)
    assert sum(len(v) for v in traces.values()) == n
    return traces


def check_chain(spans: list[Span], middle: PythonServer, leaf: PythonServer) -> Span:
    """A CLIENT -> B SERVER -> B CLIENT -> C SERVER, each the parent of the next."""

    def one(kind: int, service: str, port: int) -> Span:
        found = [
            s
            for s in spans
            if s.kind == kind and s.service == service and s.attributes["server.port"] == port
        ]
        assert len(found) == 1, [(s.service, s.kind, s.attributes.get("url.path")) for s in spans]
        return found[0]

    a_client = one(CLIENT, CLIENT_SERVICE, middle.port)
    b_server = one(SERVER, "svc-b", middle.port)
    b_client = one(CLIENT, "svc-b", leaf.port)
    c_server = one(SERVER, "svc-c", leaf.port)
    assert len(spans) == 4
    assert b_server.parent_span_id == a_client.span_id
    assert b_client.parent_span_id == b_server.span_id
    assert c_server.parent_span_id == b_client.span_id
    # children sit inside their parents' time
    for parent, child in ((a_client, b_server), (b_server, b_client), (b_client, c_server)):
        assert parent.start_ns <= child.start_ns and child.end_ns <= parent.end_ns
    return a_client


def test_uninstrumented_chain_is_one_trace_per_request(
    collector: CollectorProcess, grpc_sink: GrpcSink, chain: tuple[PythonServer, PythonServer]
) -> None:
    middle, leaf = chain
    since = time.time_ns()
    conn = http.client.HTTPConnection(
        "127.0.0.1", middle.port
    )  # keep-alive: no leaks between requests
    n = 5
    for _ in range(n):
        conn.request("GET", "/chain")
        assert conn.getresponse().read() == b"ok /leaf\n"
    conn.close()
    traces = wait_for_spans(grpc_sink, {middle.port, leaf.port}, since, 4 * n)
    assert len(traces) == n
    for spans in traces.values():
        root = check_chain(spans, middle, leaf)
        assert root.parent_span_id == ""


def test_concurrent_requests_do_not_mix(
    collector: CollectorProcess, grpc_sink: GrpcSink, chain: tuple[PythonServer, PythonServer]
) -> None:
    middle, leaf = chain
    since = time.time_ns()
    threads, per_thread = 6, 5
    get_many(middle.port, "/chain", per_thread, threads)
    traces = wait_for_spans(grpc_sink, {middle.port, leaf.port}, since, 4 * threads * per_thread)
    assert len(traces) == threads * per_thread
    for spans in traces.values():
        check_chain(spans, middle, leaf)


def test_wire_context_is_joined(
    collector: CollectorProcess, grpc_sink: GrpcSink, chain: tuple[PythonServer, PythonServer]
) -> None:
    middle, leaf = chain
    since = time.time_ns()
    trace_id, caller = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    conn = http.client.HTTPConnection("127.0.0.1", middle.port)
    conn.request("GET", "/chain", headers={"traceparent": f"00-{trace_id}-{caller}-01"})
    conn.getresponse().read()
    conn.request("GET", "/chain")  # the next request on the connection is on its own
    conn.getresponse().read()
    conn.close()
    traces = wait_for_spans(grpc_sink, {middle.port, leaf.port}, since, 8)
    assert set(traces) >= {trace_id} and len(traces) == 2
    joined = traces[trace_id]
    b_server = next(s for s in joined if s.kind == SERVER and s.service == "svc-b")
    assert b_server.parent_span_id == caller  # child of the span that sent the header
    assert {(s.service, s.kind) for s in joined} == {
        (CLIENT_SERVICE, CLIENT),
        ("svc-b", SERVER),
        ("svc-b", CLIENT),
        ("svc-c", SERVER),
    }
