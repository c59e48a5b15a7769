"""PostgreSQL from its real clients: pgbench (Debian) and psycopg (PyPI)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import psycopg
import pytest

from db_spans import settle
from harness import CollectorProcess, Postgres
from otlp_sink import GrpcSink

PGBENCH = str(Postgres.BIN / "pgbench")


def test_pgbench_initialisation_and_run_span_per_statement(
    collector: CollectorProcess, grpc_sink: GrpcSink, postgres: Postgres
) -> None:
    since = time.time_ns()
    base = [PGBENCH, "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "postgres"]
    subprocess.run([*base, "-i", "-s", "1", "-q", "postgres"], check=True, capture_output=True)
    run_since = time.time_ns()
    clients, per_client = 2, 50
    subprocess.run(
        [*base, "-c", str(clients), "-t", str(per_client), "-n", "postgres"],
        check=True,
        capture_output=True,
    )
    txns = clients * per_client
    # The TPC-B-like script: BEGIN, 3 UPDATEs, SELECT, INSERT, END per transaction.
    spans = settle(grpc_sink, "postgresql", postgres.port, since, 7 * txns)
    run = Counter(s.name for s in spans if s.start_ns >= run_since)
    assert run["UPDATE pgbench_accounts"] == run["UPDATE pgbench_tellers"] == txns
    assert run["UPDATE pgbench_branches"] == run["INSERT pgbench_history"] == txns
    assert run["SELECT pgbench_accounts"] == run["BEGIN"] == run["END"] == txns
    copy = [s for s in spans if s.attributes["db.operation.name"] == "COPY"]
    assert [s.attributes["db.collection.name"] for s in copy] == ["pgbench_accounts"]
    assert copy[0].status_code == 0 and copy[0].attributes["db.namespace"] == "postgres"
    update = next(s for s in spans if s.name == "UPDATE pgbench_accounts")
    text = update.attributes["db.query.text"]
    # pgbench sends random deltas of either sign: the sign is all that stays of the literal.
    assert (
        text.replace("-?", "?")
        == "UPDATE pgbench_accounts SET abalance = abalance + ? WHERE aid = ?;"
    )
    assert all(s.status_code == 0 for s in spans)
    assert collector.telemetry()["events_lost"] == 0


def test_psycopg_prepared_statements_and_sqlstate(
    collector: CollectorProcess, grpc_sink: GrpcSink, postgres: Postgres
) -> None:
    since = time.time_ns()
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t_users (id int, name text)")
        for i in range(6):
            conn.execute("SELECT name FROM t_users WHERE id = %s", (i,), prepare=True).fetchall()
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table WHERE id = %s", (7,))
    spans = settle(grpc_sink, "postgresql", postgres.port, since, 9)
    selects = [s for s in spans if s.name == "SELECT t_users"]
    assert len(selects) == 6
    assert {s.attributes["db.query.text"] for s in selects} == {
        "SELECT name FROM t_users WHERE id = $1"
    }
    errors = {s.attributes["db.response.status_code"]: s for s in spans if s.status_code == 2}
    assert set(errors) == {"22012", "42P01"}
    assert errors["22012"].attributes["db.query.text"] == "SELECT ?/?"
    assert errors["42P01"].attributes["error.type"] == "42P01"
    assert all(s.service.startswith("python") for s in spans)
