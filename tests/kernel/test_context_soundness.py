"""In-process context never files a request under a stranger's: A -> B -> C of
one runtime under concurrency, every request with its own path, every parent
checked.

Go runs goroutines on any OS thread, so "the request this thread serves" is no
context there; an event loop serves many requests on one thread. A wrong parent
is worse than none (it merges two users' requests into one trace). Socket
context (client span -> the next hop's server span) stays exact and is checked
too. (`bench/context_trees.py` reports complete trees per runtime.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Chain, CollectorProcess, build_go, get_distinct, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink, Span

HERE = Path(__file__).parent


@pytest.fixture(scope="module", params=["go", "asyncio"])
def chain_of(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chain]:
    if request.param == "go":
        binary = tmp_path_factory.mktemp("go") / "go_chain"
        argv = [str(build_go(HERE / "go_chain" / "main.go", binary))]
    else:
        argv = [sys.executable, str(HERE / "chains" / "asyncio_hop.py")]
    chain = Chain(argv, request.param)
    yield chain
    chain.stop()


def spans_of(sink: GrpcSink, tag: str) -> list[Span]:
    return [
        s
        for s in list(sink.store.spans)
        if str(s.attributes.get("url.path", "")).startswith(f"/{tag}/")
    ]


@pytest.mark.parametrize(("connections", "per_connection"), [(8, 150), (64, 25)])
def test_a_chain_under_concurrency_has_no_wrong_parent(
    collector: CollectorProcess,
    grpc_sink: GrpcSink,
    chain_of: Chain,
    connections: int,
    per_connection: int,
) -> None:
    tag = f"{chain_of.name}{connections}"
    requests = get_distinct(chain_of.port, tag, per_connection, connections)
    # each request: the driver's client, A server+client, B server+client, C server
    wait_until(lambda: len(spans_of(grpc_sink, tag)) >= 6 * requests, 60, f"{6 * requests} spans")
    time.sleep(1.0)
    spans = spans_of(grpc_sink, tag)
    assert len(spans) == 6 * requests
    by_id = {s.span_id: s for s in spans}
    linked = wrong = 0
    for span in spans:
        if not span.parent_span_id:
            continue
        parent = by_id.get(span.parent_span_id)
        assert parent is not None, "a parent that was never exported"
        linked += 1
        if parent.attributes["url.path"] != span.attributes["url.path"]:
            wrong += 1
    assert wrong == 0, f"{wrong} of {linked} links join two different requests"
    # Socket context: every hop's server span is the child of the client span
    # that sent that very request.
    servers = [s for s in spans if s.kind == SERVER and s.service in chain_of.services]
    assert len(servers) == 3 * requests
    for server in servers:
        parent = by_id[server.parent_span_id]
        assert parent.kind == CLIENT
        assert parent.attributes["url.path"] == server.attributes["url.path"]
