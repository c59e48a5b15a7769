"""What SQL protocols share: the statement record and the literal scrubber.

PostgreSQL and MySQL parsers both produce `SqlExchange`; spans are built from
it the same way. `sanitize` replaces literals with `?` so that values never
leave the node unless the operator asked for raw text.
"""

from __future__ import annotations

import re

MAX_QUERY_TEXT = 2048  # characters of db.query.text kept (the conventions advise a bound)


# Tokenisers, one per way a server may read the text. Alternatives in priority
# order: comments and quoted identifiers are kept, literals (the `_LITERALS` groups) become
# "?". Whether a backslash escapes a quote depends on server settings we cannot
# see (PostgreSQL's standard_conforming_strings, MySQL's NO_BACKSLASH_ESCAPES),
# so `sanitize` masks what is a literal under either reading: a misreading can
# only hide too much. An unterminated literal or comment runs to the end.
def _quoted(q: str, escapes: bool) -> str:
    """A literal delimited by `q` (doubled inside), up to its end or the text's."""
    if escapes:
        return rf"{q}(?:[^{q}\\]|{q}{q}|\\.|\\\Z)*{q}?"
    return rf"{q}(?:[^{q}]|{q}{q})*{q}?"


_NUMBER = (
    r"(?P<number>0[xX][0-9A-Fa-f]+|0[bB][01]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
)


def _postgresql(escapes: bool) -> re.Pattern[str]:
    return re.compile(
        rf"""--[^\n]*|/\*.*?(?:\*/|\Z)|"(?:[^"]|"")*"?
        |(?P<dollar>\$(?P<tag>(?:[A-Za-z_][A-Za-z_0-9]*)?)\$.*?(?:\$(?P=tag)\$|\Z))
        |(?P<escaped>[Ee]{_quoted("'", True)})
        |(?P<string>(?:[XxBbNn]|[Uu]&)?{_quoted("'", escapes)})
        |\$\d+|[A-Za-z_][A-Za-z_0-9$]*|{_NUMBER}""",
        re.VERBOSE | re.DOTALL,
    )


def _mysql(escapes: bool) -> re.Pattern[str]:
    return re.compile(
        rf"""--(?:\s[^\n]*|\Z)|\#[^\n]*|/\*(?!!|M!).*?(?:\*/|\Z)|`(?:[^`]|``)*`?
        |(?P<string>[XxBbNn]?{_quoted("'", escapes)}|{_quoted('"', escapes)})
        |[A-Za-z_][A-Za-z_0-9$]*|{_NUMBER}""",
        re.VERBOSE | re.DOTALL,
    )


_READINGS = {"postgresql": (_postgresql(False), _postgresql(True))}
_MYSQL_READINGS = (_mysql(True), _mysql(False))
_LITERALS = ("string", "escaped", "dollar", "number")


def _literal_spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    spans = []
    for m in pattern.finditer(text):
        kind = m.lastgroup
        if kind in _LITERALS:
            spans.append(m.span(kind))
    return spans


def sanitize(text: str, dialect: str = "postgresql", limit: int = MAX_QUERY_TEXT) -> str:
    """Literals (strings, numbers, dollar-quoted bodies) -> '?', bounded in length.

    In MySQL double quotes delimit strings; in PostgreSQL they quote identifiers.
    """
    text = text[: limit * 4]
    readings = _READINGS.get(dialect, _MYSQL_READINGS)
    spans = _literal_spans(readings[0], text)
    if "\\" in text:  # the only character the readings differ on
        spans = sorted(spans + _literal_spans(readings[1], text))
    out = []
    pos = 0
    for start, end in spans:
        if end <= pos:
            continue
        if start >= pos:
            out.append(text[pos:start])
            out.append("?")
        pos = end
    out.append(text[pos:])
    result = "".join(out)
    return result if len(result) <= limit else result[: limit - 1] + "…"


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
