"""What SQL protocols share: the statement record and the literal scrubber.

PostgreSQL and MySQL parsers both produce `SqlExchange`; spans are built from
it the same way. `sanitize` replaces literals with `?` so that values never
leave the node unless the operator asked for raw text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_QUERY_TEXT = 2048  # characters of db.query.text kept (the conventions advise a bound)


class SqlExchange(NamedTuple):
    """One statement execution and its outcome."""

    system: str  # db.system.name: "postgresql", "mysql", "mariadb"
    query: str  # the statement as sent (possibly cut at the capture size)
    namespace: str | None  # database named when the connection started, if seen
    start_ts: int
    end_ts: int
    answered: bool  # False: the connection ended (or we stopped watching) first
    error_code: str | None = None  # SQLSTATE / MySQL error number
    error_message: str | None = None
    prepared: bool = False  # executed from a prepared statement (text came from its prepare)
    token: object = None


# One pass, alternatives in priority order: comments and quoted identifiers
# are kept as they are, literals become "?".
_PG_TOKENS = re.compile(
    r"""
    (?P<keep>--[^\n]*|/\*.*?\*/|"(?:[^"]|"")*")
    |(?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$.*?\$(?P=tag)\$)
    |(?P<string>[EeXxBbNn]?'(?:[^'\\]|''|\\.)*'?)
    |(?P<param>\$\d+)
    |(?P<word>[A-Za-z_][A-Za-z_0-9$]*)
    |(?P<number>(?:0[xX][0-9A-Fa-f]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
    """,
    re.VERBOSE | re.DOTALL,
)
_MYSQL_TOKENS = re.compile(
    r"""
    (?P<keep>--[^\n]*|\#[^\n]*|/\*.*?\*/|`(?:[^`]|``)*`)
    |(?P<string>[Xx]?'(?:[^'\\]|''|\\.)*'?|"(?:[^"\\]|""|\\.)*"?)
    |(?P<word>[A-Za-z_][A-Za-z_0-9$]*)
    |(?P<number>(?:0[xX][0-9A-Fa-f]+|0[bB][01]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
    """,
    re.VERBOSE | re.DOTALL,
)


_LITERALS = frozenset({"string", "number", "dollar"})


def sanitize(text: str, dialect: str = "postgresql", limit: int = MAX_QUERY_TEXT) -> str:
    """Literals (strings, numbers, dollar-quoted bodies) -> '?', bounded in length.

    In MySQL double quotes delimit strings; in PostgreSQL they quote identifiers.
    """
    pattern = _MYSQL_TOKENS if dialect != "postgresql" else _PG_TOKENS

    def replace(m: re.Match[str]) -> str:
        return "?" if m.lastgroup in _LITERALS else m.group(0)

    out = pattern.sub(replace, text[: limit * 4])
    return out if len(out) <= limit else out[: limit - 1] + "…"


_FIRST_WORDS = re.compile(r"(?:\s|--[^\n]*\n|/\*.*?\*/|\()*([A-Za-z]+)", re.DOTALL)
_TARGET = re.compile(
    r"\b(?:FROM|INTO|UPDATE|TABLE|JOIN)\s+((?:[A-Za-z_][\w$]*\.)?[A-Za-z_][\w$]*|`[^`]+`|\"[^\"]+\")",
    re.IGNORECASE,
)
_TARGETED = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "COPY", "TRUNCATE", "REPLACE"})


def operation_of(text: str) -> str:
    """The statement's first keyword, upper case: db.operation.name."""
    m = _FIRST_WORDS.match(text)
    return m.group(1).upper() if m else ""


def collection_of(text: str, operation: str) -> str | None:
    """The table a simple statement works on: db.collection.name (None when unsure)."""
    if operation not in _TARGETED:
        return None
    if operation == "COPY" or operation == "TRUNCATE":
        m = re.match(r"\s*\w+\s+(?:TABLE\s+)?([\w.$]+)", text, re.IGNORECASE)
        return m.group(1) if m else None
    m = _TARGET.search(text[:512])
    return m.group(1).strip('`"') if m else None
