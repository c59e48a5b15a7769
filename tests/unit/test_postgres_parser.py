"""PostgreSQL parser on streams recorded from psql, psycopg and pgbench-like traffic."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from captured import load
from otel_ebpf.model import RequestStarted, SqlExchange
from otel_ebpf.processors.protocols.postgres import PgConnection, looks_like_startup
from splitting import feed_random, replay, resplit


def records(out: list[SqlExchange]) -> list[tuple[object, ...]]:
    """What a span is built from, times left out (a re-split moves them)."""
    return [(x.query, x.namespace, x.answered, x.error_code, x.prepared) for x in out]


def test_simple_queries_errors_and_copy_from_psql() -> None:
    conn = PgConnection()
    out = replay(conn, load("pg_psql.bin"))
    assert records(out) == [
        ("CREATE TABLE IF NOT EXISTS items(id int, name text)", "postgres", True, None, False),
        ("INSERT INTO items VALUES (1, 'secret-name')", "postgres", True, None, False),
        ("SELECT * FROM items WHERE id = 1", "postgres", True, None, False),
        ("SELECT * FROM missing_table", "postgres", True, "42P01", False),
        ("COPY items FROM STDIN", "postgres", True, None, False),
    ]
    assert out[3].error_message == 'relation "missing_table" does not exist'
    assert conn.parse_errors == 0


def test_extended_protocol_and_prepared_statements_from_psycopg() -> None:
    out = replay(PgConnection(), load("pg_psycopg.bin"))
    prepared = "SELECT name FROM items WHERE id = $1"
    assert records(out) == [
        (prepared, "postgres", True, None, True),
        (prepared, "postgres", True, None, True),
        (prepared, "postgres", True, None, True),
        ("SELECT $1::int + 1", "postgres", True, None, False),
        ("SELECT 1/0", "postgres", True, "22012", False),
        ("INSERT INTO items VALUES ($1, $2)", "postgres", True, None, False),
        ("INSERT INTO items VALUES ($1, $2)", "postgres", True, None, False),
    ]
    assert all(x.end_ts > x.start_ts for x in out)


def test_ssl_request_refused_then_plain() -> None:
    chunks = load("pg_sslrequest.bin")
    assert looks_like_startup(chunks[0][1])
    out = replay(PgConnection(), chunks)
    assert records(out) == [("SELECT 1", "postgres", True, None, False)]


def test_ssl_request_accepted_stops_parsing_cleanly() -> None:
    conn = PgConnection()
    assert conn.feed(True, struct.pack(">II", 8, 80877103), 1) == []
    assert conn.feed(False, b"S", 2) == []
    assert conn.feed(True, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 3) == []
    assert conn.not_protocol(True) and conn.close(4) == []


def test_errors_skip_the_rest_of_the_sync_group() -> None:
    def msg(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack(">I", len(body) + 4) + body

    conn = PgConnection()
    batch = b"".join(
        [
            msg(b"P", b"\0SELECT bad\0\0\0"),
            msg(b"B", b"\0\0" + b"\0" * 6),
            msg(b"E", b"\0\0\0\0\0"),
            msg(b"P", b"\0SELECT 2\0\0\0"),
            msg(b"B", b"\0\0" + b"\0" * 6),
            msg(b"E", b"\0\0\0\0\0"),
            msg(b"S", b""),
        ]
    )
    started = conn.feed(True, batch, 1)  # two Executes: two requests
    assert [type(s) for s in started] == [RequestStarted, RequestStarted]
    error = msg(b"E", b"SERROR\0C42703\0Mcolumn does not exist\0\0")
    first = conn.feed(False, error, 2)
    rest = conn.feed(False, msg(b"Z", b"I"), 3)
    assert [(x.query, x.error_code) for x in first + rest] == [
        ("SELECT bad", "42703"),
        ("SELECT 2", "42703"),  # skipped by the server because of the first
    ]


def test_big_rows_and_copy_data_are_skipped_by_length() -> None:
    chunks = load("pg_psql.bin") + load("pg_psycopg.bin")[1:]
    full = records(replay(PgConnection(), load("pg_psql.bin")))
    # Every call reduced to the first 64 bytes, the rest reported as skipped.
    assert records(replay(PgConnection(), load("pg_psql.bin"), capture=64)) == full
    assert chunks  # both fixtures load


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


def test_a_copy_whose_headers_the_capture_missed_is_no_parse_error() -> None:
    """pgbench -i: rows in ~8 KiB writes, of which the kernel sends the first KiB;
    framing is lost in each write's uncaptured rest and found at the next write."""
    conn = PgConnection()
    startup = b"\0\3\0\0user\0postgres\0database\0bench\0\0"
    conn.feed(True, struct.pack(">I", len(startup) + 4) + startup, 1)
    conn.feed(False, _message(b"R", bytes(4)) + _message(b"Z", b"I"), 2)
    conn.feed(True, _message(b"Q", b"copy pgbench_accounts from stdin\0"), 3)
    conn.feed(False, _message(b"G", bytes(3)), 4)
    rows = [_message(b"d", f"{i}\t1\t0\t\n".encode()) for i in range(1, 20_001)]
    writes, write = [], b""
    for row in [*rows, _message(b"c", b"")]:
        write += row
        if len(write) > 8192:  # libpq sends whole messages past 8 KiB
            writes.append(write)
            write = b""
    for w in [*writes, write]:
        conn.feed(True, w[:1024], 5)
        if len(w) > 1024:
            conn.skip(True, len(w) - 1024, 5)
    (copy,) = conn.feed(False, _message(b"C", b"COPY 20000\0") + _message(b"Z", b"I"), 6)
    assert copy.query == "copy pgbench_accounts from stdin" and copy.answered
    assert conn.parse_errors == 0
    conn.feed(True, _message(b"Q", b"select 1\0"), 7)  # in sync again
    conn.feed(True, b"\1 no message starts so", 8)  # bytes that are no message still are
    assert conn.parse_errors == 1


def test_unanswered_statement_is_reported_at_close() -> None:
    conn = PgConnection()
    conn.feed(True, b"Q" + struct.pack(">I", 13) + b"SELECT 1;\0", 5)
    (x,) = conn.close(9)
    assert (x.query, x.answered, x.end_ts) == ("SELECT 1;", False, 9)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 2000), max_size=60))
def test_random_splits_give_the_same_records(cuts: list[int]) -> None:
    for name in ("pg_psql.bin", "pg_psycopg.bin"):
        chunks = load(name)
        assert records(replay(PgConnection(), resplit(chunks, cuts))) == records(
            replay(PgConnection(), chunks)
        )


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120), st.integers(0, 3)), max_size=30))
def test_random_bytes_never_raise(chunks: list[tuple[bool, bytes, int]]) -> None:
    feed_random(PgConnection(), chunks, gap_unit=40)


@given(st.lists(st.sampled_from(load("pg_psycopg.bin")), max_size=20), st.integers(0, 3))
def test_reordered_real_messages_never_raise(chunks: list[tuple[bool, bytes]], gap: int) -> None:
    feed_random(PgConnection(), [(r, d, gap) for r, d in chunks], gap_unit=7)
