"""Real protocol streams recorded by tests/captures/record.py, for parser tests."""

from __future__ import annotations

import struct
from pathlib import Path

CAPTURES = Path(__file__).parent.parent / "captures"


def load(name: str) -> list[tuple[bool, bytes]]:
    """(is_request, bytes) chunks in the order the relay saw them."""
    data = (CAPTURES / name).read_bytes()
    chunks, pos = [], 0
    while pos < len(data):
        to_server, n = struct.unpack_from(">BI", data, pos)
        chunks.append((bool(to_server), data[pos + 5 : pos + 5 + n]))
        pos += 5 + n
    return chunks


def directions(chunks: list[tuple[bool, bytes]]) -> tuple[bytes, bytes]:
    """Both directions as whole streams."""
    return (
        b"".join(d for r, d in chunks if r),
        b"".join(d for r, d in chunks if not r),
    )
