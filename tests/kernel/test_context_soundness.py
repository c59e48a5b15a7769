"""In-process context never files a request under a stranger's: A -> B -> C of
one runtime under concurrency, every request with its own path, every parent
checked.

Go runs goroutines on any OS thread, so "the request this thread serves" is no
context there: the goroutine is (bpf/go.bpf.c). An event loop serves many
requests on one thread: asyncio's task is (bpf/asyncio.bpf.c), on Debian's 3.11
(symbols from python3.11-dbg) and pyenv's 3.11 and 3.12, and Node's callback,
with what began it (bpf/node.bpf.c). All must give whole trees. A wrong parent is worse than none (it merges two users' requests into
one trace). Socket context (client span -> the next hop's server span) stays
exact and is checked too.
(`bench/context_trees.py` reports complete trees per runtime.)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Chain, CollectorProcess, asyncio_pythons, build_go, get_distinct, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink, Span, chain_trees

HERE = Path(__file__).parent


# Go: the toolchain installed here, and the newer one the module proxy serves.
GO_TOOLCHAINS = {"go": "local", "go127": "go1.27.3"}
PYTHONS = asyncio_pythons()
ASYNCIO = {f"asyncio{name.replace('.', '')}": python for name, python in PYTHONS.items()}
NODE = {"node": [str(Path(shutil.which("node") or "/usr/bin/node").resolve()), "node_hop.js"]}
WHOLE_TREES = {
    **dict.fromkeys(GO_TOOLCHAINS, 0.99),
    **dict.fromkeys(ASYNCIO, 0.95),
    "node": 0.95,
}


def test_every_asyncio_python_is_here() -> None:
    """setup.sh installs them: a missing one would silently drop its case."""
    assert set(PYTHONS) == {"3.11-debian", "3.11", "3.12"}


@pytest.fixture(scope="module", params=[*GO_TOOLCHAINS, *ASYNCIO, *NODE])
def chain_of(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    collector: CollectorProcess,
    grpc_sink: GrpcSink,
) -> Iterator[Chain]:
    toolchain = GO_TOOLCHAINS.get(request.param)
    if toolchain is not None:
        binary = tmp_path_factory.mktemp("go") / "go_chain"  # stripped, as images ship
        source = HERE / "go_chain" / "main.go"
        argv = [str(build_go(source, binary, "-ldflags=-s -w", toolchain=toolchain))]
    elif request.param in NODE:
        node, hop = NODE[request.param]
        argv = [node, str(HERE / "chains" / hop)]
    else:
        argv = [ASYNCIO[request.param], str(HERE / "chains" / "asyncio_hop.py")]
    chain = Chain(argv, request.param)
    warm_up(chain, grpc_sink)
    yield chain
    chain.stop()


def warm_up(chain: Chain, sink: GrpcSink) -> None:
    """Requests one at a time until one makes a whole tree: the collector probes a
    program when it first sees it traced, and the requests meanwhile may have no
    goroutine or task context (they lose their parent, never get a wrong one)."""
    for attempt in range(40):
        tag = f"{chain.name}warm{attempt}"
        get_distinct(chain.port, tag, 1, 1)
        wait_until(lambda t=tag: len(spans_of(sink, t)) >= 6, 30, f"6 spans of {tag}")
        if chain_trees(spans_of(sink, tag))[0] == 1:
            return
        time.sleep(0.25)
    raise AssertionError(f"no {chain.name} request made a whole tree: context never began")


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
    complete, wrong_trees = chain_trees(spans)
    assert wrong_trees == 0
    assert complete >= WHOLE_TREES[chain_of.name] * requests, (
        f"{complete} of {requests} requests are whole trees"
    )
    # Socket context: every hop's server span is the child of the client span
    # that sent that very request.
    servers = [s for s in spans if s.kind == SERVER and s.service in chain_of.services]
    assert len(servers) == 3 * requests
    for server in servers:
        parent = by_id[server.parent_span_id]
        assert parent.kind == CLIENT
        assert parent.attributes["url.path"] == server.attributes["url.path"]
