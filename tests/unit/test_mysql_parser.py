"""MySQL/MariaDB parser on streams recorded from the mariadb client, PyMySQL and
mysql-connector-python's server-side prepared statements."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from captured import load
from otel_ebpf.model import SqlExchange
from otel_ebpf.processors.protocols.mysql import MysqlConnection, looks_like_server_greeting
from splitting import feed_random, replay, resplit


def records(out: list[SqlExchange]) -> list[tuple[object, ...]]:
    return [(x.query, x.system, x.namespace, x.error_code, x.prepared) for x in out]


def test_mariadb_client_queries_and_error() -> None:
    chunks = load("mysql_client.bin")
    assert looks_like_server_greeting(chunks[0][1]) and not chunks[0][0]
    out = replay(MysqlConnection(), chunks)
    assert [(q, e) for q, _, _, e, _ in records(out)] == [
        ("CREATE TABLE IF NOT EXISTS items(id int, name text)", None),
        ("INSERT INTO items VALUES (1, 'secret-name')", None),
        ("SELECT * FROM items WHERE id = 1", None),
        ("SELECT 1", None),
        ("SELECT 2", None),
        ("SELECT * FROM missing_table", "1146"),
    ]
    assert {(x.system, x.namespace) for x in out} == {("mariadb", "app")}
    assert out[-1].error_message == "Table 'app.missing_table' doesn't exist"


def test_pymysql_text_protocol() -> None:
    out = replay(MysqlConnection(), load("mysql_pymysql.bin"))
    assert [x.query for x in out][2:4] == [
        "SELECT name FROM items WHERE id = 1",
        "INSERT INTO items VALUES (2, 'x')",
    ]
    assert out[-1].error_code == "1146" and all(x.answered for x in out)


def test_prepared_statements_keep_their_text_by_id() -> None:
    out = replay(MysqlConnection(), load("mysql_prepared.bin"))
    executed = [x for x in out if x.prepared]
    assert [x.query for x in executed] == ["SELECT name, id FROM items WHERE id = ?"] * 3
    failed = out[-1]  # a prepare that fails is reported, with its error number
    assert (failed.query, failed.error_code) == ("SELECT nope FROM items WHERE id = ?", "1054")


def test_multiple_result_sets_end_one_statement() -> None:
    def packet(seq: int, body: bytes) -> bytes:
        return len(body).to_bytes(3, "little") + bytes([seq]) + body

    conn = MysqlConnection()
    conn.feed(True, packet(0, b"\x03SELECT 1; SELECT 2"), 1)
    column = b"\x03def\x00\x00\x00\x011\x00\x0c?\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00"
    first = [
        packet(1, b"\x01"),
        packet(2, column),
        packet(3, b"\xfe\x00\x00\x02\x00"),
        packet(4, b"\x011"),
        packet(5, b"\xfe\x00\x00\x0a\x00"),  # EOF, SERVER_MORE_RESULTS_EXISTS
    ]
    assert conn.feed(False, b"".join(first), 2) == []
    second = [packet(6, b"\x01"), packet(7, column), packet(8, b"\xfe\x00\x00\x02\x00")]
    second += [packet(9, b"\x012"), packet(10, b"\xfe\x00\x00\x02\x00")]
    (x,) = conn.feed(False, b"".join(second), 3)
    assert (x.query, x.end_ts, x.error_code) == ("SELECT 1; SELECT 2", 3, None)


def test_ssl_and_compression_are_left_alone() -> None:
    greeting = load("mysql_client.bin")[0][1]
    for flags in (0x800 | 0x200, 0x20 | 0x200):
        conn = MysqlConnection()
        conn.feed(False, greeting, 1)
        response = flags.to_bytes(4, "little") + b"\0" * 28
        if flags & 0x20:
            response += b"user\0\0"
        conn.feed(True, len(response).to_bytes(3, "little") + b"\x01" + response, 2)
        assert conn.not_protocol(True)
        assert conn.feed(True, b"\x16\x03\x01\x00\x05hello", 3) == [] and conn.close(4) == []


def test_truncated_calls_give_the_same_records() -> None:
    for name in ("mysql_client.bin", "mysql_pymysql.bin", "mysql_prepared.bin"):
        chunks = load(name)
        full = records(replay(MysqlConnection(), chunks))
        assert records(replay(MysqlConnection(), chunks, capture=128)) == full


@settings(max_examples=200)
@given(st.lists(st.integers(0, 2000), max_size=60))
def test_random_splits_give_the_same_records(cuts: list[int]) -> None:
    for name in ("mysql_client.bin", "mysql_pymysql.bin", "mysql_prepared.bin"):
        chunks = load(name)
        assert records(replay(MysqlConnection(), resplit(chunks, cuts))) == records(
            replay(MysqlConnection(), chunks)
        )


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120), st.integers(0, 3)), max_size=30))
def test_random_bytes_never_raise(chunks: list[tuple[bool, bytes, int]]) -> None:
    feed_random(MysqlConnection(), chunks, gap_unit=40)


@given(st.lists(st.sampled_from(load("mysql_prepared.bin")), max_size=20), st.integers(0, 3))
def test_reordered_real_packets_never_raise(chunks: list[tuple[bool, bytes]], gap: int) -> None:
    feed_random(MysqlConnection(), [(r, d, gap) for r, d in chunks], gap_unit=7)
