"""Numbers as the wire protocols write them: ASCII digits only.

`str.isdigit()` accepts '²' and `int()` accepts '١٢', ' 12', '+12' and '1_2';
none of them is a number in HTTP (RFC 9110 section 5.6.1: 1*DIGIT, DIGIT = %x30-39).
Every number read from someone else's bytes goes through here.
"""

from __future__ import annotations

from typing import Final

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
MAX_DIGITS: Final = 19  # below 2**63: no length field of ours is larger


def decimal(text: str | bytes) -> int | None:
    """1*DIGIT as an int; None for anything else (signs, spaces, non-ASCII digits).
    bytes.isdigit() is ASCII-only; str.isascii() is a flag check in CPython."""
    if isinstance(text, str) and not text.isascii():
        return None
    if not text.isdigit() or len(text) > MAX_DIGITS:
        return None
    return int(text)


def hexadecimal(text: bytes) -> int | None:
    """1*HEXDIG as an int (chunk sizes); None for anything else."""
    if not text or len(text) > 16 or not _HEX.issuperset(text):
        return None
    return int(text, 16)
