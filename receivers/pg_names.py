"""Names for the PostgreSQL statements the kernel counts.

The kernel counts a client's simple Query by its text's fingerprint (literals
left out) and its connection's database, both hashes (bpf/sockets.bpf.c,
red_pg_query, red_pg_startup). It keeps the first text of each fingerprint and
the name of each database; this names the operation and the table from the text
with the code spans use, so a counted statement and a traced one join one series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from otel_ebpf.processors.protocols.sql import collection_of, operation_of

log = logging.getLogger(__name__)
V = TypeVar("V")

MAX_NAMES = 16384  # statements and databases named and remembered (forgotten all at once)

# What the kernel kept under a hash: a statement's text, a database's name (NUL
# and all past it); None: not kept, or no longer.
ReadKept = Callable[[int], bytes | None]


def fnv1a_32(data: bytes) -> int:
    """The kernel's hash of a database's name (and of the parameter names it seeks)."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


class PgNames:
    """Fingerprints -> (operation, table); database hashes -> names."""

    def __init__(self, read_text: ReadKept, read_database: ReadKept) -> None:
        self._read_text = read_text
        self._read_database = read_database
        self._statements: dict[int, tuple[str, str]] = {}
        self._databases: dict[int, str] = {0: ""}  # 0: a connection older than the collector
        self.unnamed = 0  # statements counted whose text the kernel no longer had

    def statement(self, fingerprint: int) -> tuple[str, str]:
        """The operation and table ("" when none) of a fingerprint's statement."""
        named = self._statements.get(fingerprint)
        if named is not None:
            return named
        raw = self._read_text(fingerprint)
        if raw is None:
            self.unnamed += 1
            log.debug("statement %016x: its text is no longer kept", fingerprint)
            return "", ""
        text = raw.decode("utf-8", "replace")
        operation = operation_of(text)
        named = (operation, collection_of(text, operation) or "")
        _remember(self._statements, fingerprint, named)
        return named

    def database(self, ident: int) -> str:
        """The database a connection named, by its name's hash."""
        name = self._databases.get(ident)
        if name is None:
            raw = self._read_database(ident)
            name = raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw else ""
            _remember(self._databases, ident, name)
        return name


def _remember(cache: dict[int, V], key: int, value: V) -> None:
    if len(cache) >= MAX_NAMES:
        cache.clear()
    cache[key] = value
