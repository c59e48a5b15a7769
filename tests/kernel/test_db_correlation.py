"""A database call made while serving an HTTP request is that request's child."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest

from db_spans import settle
from harness import CollectorProcess, MariaDB, Postgres, PythonServer
from otlp_sink import SERVER, GrpcSink


@pytest.fixture(scope="module")
def web(postgres: Postgres, mariadb: MariaDB) -> Iterator[PythonServer]:
    server = PythonServer(
        "db-web", script="py_db_server.py", args=(postgres.dsn, str(mariadb.port))
    )
    yield server
    server.stop()


@pytest.mark.parametrize(("path", "system"), [("/pg", "postgresql"), ("/mysql", "mariadb")])
def test_sql_call_is_child_of_the_request_span(
    collector: CollectorProcess,
    grpc_sink: GrpcSink,
    web: PythonServer,
    postgres: Postgres,
    mariadb: MariaDB,
    path: str,
    system: str,
) -> None:
    since = time.time_ns()
    n = 5
    for _ in range(n):
        with urllib.request.urlopen(f"http://127.0.0.1:{web.port}{path}", timeout=10) as r:
            assert r.read() == b"(42,)"
    port = postgres.port if system == "postgresql" else mariadb.port
    queries = [
        s
        for s in settle(grpc_sink, system, port, since, n)
        if s.attributes.get("db.query.text") == "SELECT ? + ?"
    ]
    assert len(queries) == n
    servers = {
        s.span_id: s
        for s in list(grpc_sink.store.spans)
        if s.kind == SERVER and s.service == "db-web" and s.start_ns >= since
    }
    for q in queries:
        parent = servers.get(q.parent_span_id)
        assert parent is not None, f"{q.name} has no request parent"
        assert parent.trace_id == q.trace_id and parent.attributes["url.path"] == path
        assert parent.start_ns <= q.start_ns and q.end_ns <= parent.end_ns
