"""In-process context never files a request under a stranger's: Go A -> Go B -> C
under concurrency, every request with its own path, every parent checked.

Go runs goroutines on any OS thread, so "the request this thread serves" is
no context there: a wrong parent is worse than none (it merges two users'
requests into one trace). Socket context (client span -> the next hop's server
span) stays exact and is checked too.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import CollectorProcess, end_process, free_port, listening, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink, Span

HERE = Path(__file__).parent
GO = shutil.which("go") or "/usr/local/go/bin/go"


class GoHop:
    def __init__(self, binary: Path, service: str, next_port: int | None = None) -> None:
        self.port = free_port()
        argv = [str(binary), str(self.port)]
        if next_port is not None:
            argv.append(str(next_port))
        self.proc = subprocess.Popen(argv, env={**os.environ, "OTEL_SERVICE_NAME": service})
        wait_until(lambda: listening(self.port), 10, f"{service} listening")

    def stop(self) -> None:
        end_process(self.proc)


@pytest.fixture(scope="module")
def go_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GoHop, GoHop, GoHop]]:
    binary = tmp_path_factory.mktemp("go") / "go_chain"
    subprocess.run(
        [GO, "build", "-o", str(binary), str(HERE / "go_chain" / "main.go")],
        check=True,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
    )
    c = GoHop(binary, "go-c")
    b = GoHop(binary, "go-b", c.port)
    a = GoHop(binary, "go-a", b.port)
    yield a, b, c
    for hop in (a, b, c):
        hop.stop()


def drive(port: int, connections: int, per_connection: int, tag: str) -> int:
    """Concurrent keep-alive clients, every request with a path of its own."""
    failures: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(per_connection):
            path = f"/{tag}/c{n:02d}-{i:03d}"
            conn.request("GET", path)
            body = conn.getresponse().read()
            if body != f"leaf {path}\n".encode():
                failures.append(path)
        conn.close()

    workers = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures
    return connections * per_connection


def spans_of(sink: GrpcSink, tag: str) -> list[Span]:
    return [
        s
        for s in list(sink.store.spans)
        if str(s.attributes.get("url.path", "")).startswith(f"/{tag}/")
    ]


@pytest.mark.parametrize(("connections", "per_connection"), [(8, 150), (64, 25)])
def test_go_chain_under_concurrency_has_no_wrong_parent(
    collector: CollectorProcess,
    grpc_sink: GrpcSink,
    go_chain: tuple[GoHop, GoHop, GoHop],
    connections: int,
    per_connection: int,
) -> None:
    first_hop = go_chain[0]
    tag = f"k{connections}"
    requests = drive(first_hop.port, connections, per_connection, tag)
    # each request: the driver's client, A server+client, B server+client, C server
    wait_until(lambda: len(spans_of(grpc_sink, tag)) >= 6 * requests, 60, f"{6 * requests} spans")
    time.sleep(1.0)
    spans = spans_of(grpc_sink, tag)
    assert len(spans) == 6 * requests
    by_id = {s.span_id: s for s in spans}
    linked = wrong = 0
    for span in spans:
        parent = by_id.get(span.parent_span_id)
        if not span.parent_span_id:
            continue
        assert parent is not None, "a parent that was never exported"
        linked += 1
        if parent.attributes["url.path"] != span.attributes["url.path"]:
            wrong += 1
    assert wrong == 0, f"{wrong} of {linked} links join two different requests"
    # Socket context: every hop's server span is the child of the client span
    # that sent that very request.
    for service in ("go-a", "go-b", "go-c"):
        for server in (s for s in spans if s.kind == SERVER and s.service == service):
            parent = by_id[server.parent_span_id]
            assert parent.kind == CLIENT
            assert parent.attributes["url.path"] == server.attributes["url.path"]
