"""Literal scrubbing and statement naming shared by the SQL protocols."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from otel_ebpf.processors.protocols.sql import collection_of, operation_of, sanitize


def test_literals_become_placeholders() -> None:
    assert sanitize("SELECT * FROM t WHERE a = 'it''s' AND b = 42 AND c = 1.5e3") == (
        "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"
    )
    assert sanitize("SELECT $$body$$, $f$x$f$, E'\\n', x'1F', $1, t2.c3") == (
        "SELECT ?, ?, ?, ?, $1, t2.c3"
    )
    assert sanitize('SELECT "Quoted Col" FROM "T"') == 'SELECT "Quoted Col" FROM "T"'


def test_mysql_double_quotes_are_strings_backticks_identifiers() -> None:
    assert sanitize('SELECT `a1` FROM t WHERE b = "x" OR c = 0x1F', "mysql") == (
        "SELECT `a1` FROM t WHERE b = ? OR c = ?"
    )


def test_text_is_bounded() -> None:
    out = sanitize("SELECT " + ", ".join(["col"] * 2000), limit=100)
    assert len(out) == 100 and out.endswith("…")


def test_operation_and_collection() -> None:
    cases = {
        "  /* hint */ select a from public.users where id=1": ("SELECT", "public.users"),
        "INSERT INTO items VALUES (1)": ("INSERT", "items"),
        "update `orders` set x=1": ("UPDATE", "orders"),
        "COPY pgbench_accounts FROM STDIN": ("COPY", "pgbench_accounts"),
        "BEGIN": ("BEGIN", None),
        "(SELECT 1)": ("SELECT", None),
    }
    for text, (op, table) in cases.items():
        assert operation_of(text) == op
        assert collection_of(text, op) == table


@given(st.text(max_size=300))
def test_sanitize_never_raises_and_never_grows_without_bound(text: str) -> None:
    assert len(sanitize(text, limit=500)) <= 500


@given(st.from_regex(r"[0-9]{3,12}", fullmatch=True))
def test_numbers_never_survive(number: str) -> None:
    assert number not in sanitize(f"SELECT * FROM t WHERE id = {number} AND s = '{number}'")
