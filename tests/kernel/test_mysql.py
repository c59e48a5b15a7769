"""MariaDB from its real clients: the mariadb command-line client (Debian), PyMySQL
and mysql-connector-python's server-side prepared statements (PyPI)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import mysql.connector
import pymysql
import pytest

from db_spans import settle
from harness import CollectorProcess, MariaDB
from otlp_sink import GrpcSink


def test_mariadb_client_statements_and_error_number(
    collector: CollectorProcess, grpc_sink: GrpcSink, mariadb: MariaDB
) -> None:
    since = time.time_ns()
    statements = [
        "CREATE TABLE IF NOT EXISTS cli_items (id int, name text)",
        "INSERT INTO cli_items VALUES (1, 'secret')",
        "SELECT name FROM cli_items WHERE id = 1",
        "SELECT * FROM missing_table",
    ]
    result = subprocess.run(
        [
            "mariadb",
            "-h127.0.0.1",
            f"-P{mariadb.port}",
            "-uapp",
            "-psecret",
            "--skip-ssl",
            "--force",
            "app",
            "-e",
            "; ".join(statements),
        ],
        capture_output=True,
        text=True,
    )
    assert "1146" in result.stderr
    spans = [
        s for s in settle(grpc_sink, "mariadb", mariadb.port, since, 4) if s.service == "mariadb"
    ]
    by_text = {s.attributes.get("db.query.text"): s for s in spans}
    assert by_text["INSERT INTO cli_items VALUES (?, ?)"].name == "INSERT cli_items"
    assert by_text["SELECT name FROM cli_items WHERE id = ?"].status_code == 0
    failed = by_text["SELECT * FROM missing_table"]
    assert failed.status_code == 2 and failed.attributes["db.response.status_code"] == "1146"
    assert {s.attributes["db.namespace"] for s in spans} == {"app"}


def test_pymysql_and_server_side_prepared_statements(
    collector: CollectorProcess, grpc_sink: GrpcSink, mariadb: MariaDB
) -> None:
    since = time.time_ns()
    conn = pymysql.connect(
        host="127.0.0.1", port=mariadb.port, user="app", password="secret", database="app"
    )
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS py_items (id int, name text)")
        for i in range(5):
            cur.execute("INSERT INTO py_items VALUES (%s, %s)", (i, f"name-{i}"))
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM nope")
    conn.close()
    prepared = mysql.connector.connect(
        host="127.0.0.1",
        port=mariadb.port,
        user="app",
        password="secret",
        database="app",
        use_pure=True,
        ssl_disabled=True,
    )
    cur = prepared.cursor(prepared=True)
    for i in range(4):
        cur.execute("SELECT name FROM py_items WHERE id = %s", (i,))
        cur.fetchall()
    with pytest.raises(mysql.connector.Error):
        cur.execute("SELECT nope FROM py_items WHERE id = %s", (1,))
    cur.close()
    prepared.close()
    spans = settle(grpc_sink, "mariadb", mariadb.port, since, 12)
    texts = Counter(s.attributes.get("db.query.text") for s in spans)
    assert texts["INSERT INTO py_items VALUES (?, ?)"] == 5  # PyMySQL interpolates client-side
    assert texts["SELECT name FROM py_items WHERE id = ?"] == 4  # COM_STMT_EXECUTE, by id
    errors = {s.attributes["db.response.status_code"] for s in spans if s.status_code == 2}
    assert errors == {"1146", "1054"}
