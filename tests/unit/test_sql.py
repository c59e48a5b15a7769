"""Literal scrubbing and statement naming shared by the SQL protocols."""

from __future__ import annotations

from hypothesis import given, settings
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


# -- no literal leaves: property tests ----------------------------------------

_CONTENT = st.one_of(
    st.text(alphabet="ab '\"\\$-/*#`\n;x", max_size=12),
    st.sampled_from(["\\", "C:\\", "\\\\", "'\\", "$", "*/", "-- "]),  # the awkward endings
)


def _encoded(draw: st.DrawFn, dialect: str, escapes: bool, canary: str) -> str:
    """One literal holding `canary`, written as a client would for a server in
    the given mode (escapes: backslash escapes quotes, as in MySQL's default)."""
    content = draw(_CONTENT) + canary + draw(_CONTENT)
    forms = ["quote", "number"]
    if dialect == "postgresql":
        forms += ["e-string", "dollar"]
    else:
        forms += ["double-quote"]
    form = draw(st.sampled_from(forms))
    if form == "number":
        return canary.replace("Q", "9").replace("Z", "7")[:-1]  # digits only
    if form == "e-string":
        return "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if form == "dollar":
        tag = draw(st.sampled_from(["", "t", "body"]))
        while f"${tag}$" in content or content.endswith(f"${tag}"[:-1] if tag else "$"):
            content = content.replace("$", "")
        return f"${tag}${content}${tag}$"
    q = '"' if form == "double-quote" else "'"
    if escapes:
        body = content.replace("\\", "\\\\").replace(q, draw(st.sampled_from(["\\", q])) + q)
    else:
        body = content.replace(q, q + q)
    return q + body + q


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    dialect = draw(st.sampled_from(["postgresql", "mysql"]))
    escapes = draw(st.booleans())
    pieces, canaries = [], []
    for i in range(draw(st.integers(1, 5))):
        pieces.append(draw(st.sampled_from(["SELECT", "a =", ",", "(", ")", "FROM t1", "x.y"])))
        canary = f"Q{i}ZQ{i}ZQ"
        canaries.append(canary)
        pieces.append(_encoded(draw, dialect, escapes, canary))
        pieces.append(draw(st.sampled_from(["", ",", "AND b =", "-- note\n", "/* c */"])))
    return dialect, " ".join(pieces), canaries


@settings(max_examples=400)
@given(statements())
def test_no_literal_of_the_input_appears_in_the_output(case: tuple[str, str, list[str]]) -> None:
    dialect, text, canaries = case
    out = sanitize(text, dialect)
    for canary in canaries:
        assert canary not in out, (text, out)
        assert canary.replace("Q", "9").replace("Z", "7")[:-1] not in out, (text, out)


def test_a_literal_ending_in_a_backslash_hides_the_next_one() -> None:
    """'C:\\' closes in PostgreSQL (standard strings) and in MySQL without
    backslash escapes, and does not elsewhere: either way CANARY stays home."""
    for dialect in ("postgresql", "mysql"):
        assert "CANARY" not in sanitize("SELECT 'C:\\', 'CANARY'", dialect)
    assert sanitize("SELECT $tag$ CANARY never closed", "postgresql") == "SELECT ?"
    assert sanitize("SELECT 'never closed CANARY", "postgresql") == "SELECT ?"


@given(st.text(max_size=300), st.sampled_from(["postgresql", "mysql"]))
def test_any_text_is_sanitised_without_error(text: str, dialect: str) -> None:
    assert len(sanitize(text, dialect)) <= 2048
