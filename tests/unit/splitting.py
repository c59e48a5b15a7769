"""Parser fuzzing helpers: streams cut as the kernel's calls cut them, random traffic."""

from __future__ import annotations

import itertools
from typing import Any, Protocol

from otel_ebpf.model import RequestStarted


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


class ConnectionParser(Protocol):
    def feed(self, is_request: bool, data: bytes, ts: int) -> list[Any]: ...
    def skip(self, is_request: bool, n: int, ts: int) -> list[Any]: ...
    def close(self, ts: int) -> list[Any]: ...


def feed_random(
    conn: ConnectionParser, chunks: list[tuple[bool, bytes, int]], gap_unit: int
) -> None:
    """Random bytes both ways with random uncaptured gaps: must never raise."""
    for is_req, data, gap in chunks:
        conn.feed(is_req, data, 1)
        if gap:
            conn.skip(is_req, gap * gap_unit, 2)
    conn.close(3)


def resplit(chunks: list[tuple[bool, bytes]], cuts: list[int]) -> list[tuple[bool, bytes]]:
    """Each recorded call cut again at random points, the order of calls kept."""
    out = []
    for i, (is_request, data) in enumerate(chunks):
        mine = [c for j, c in enumerate(cuts) if j % len(chunks) == i]
        out += [(is_request, piece) for piece in split(data, mine)]
    return out


def ended(out: list[Any]) -> list[Any]:
    """A parser's output without its RequestStarted records: the exchanges."""
    return [x for x in out if not isinstance(x, RequestStarted)]


def replay(
    conn: ConnectionParser, chunks: list[tuple[bool, bytes]], capture: int | None = None
) -> list[Any]:
    """Feed calls as the kernel reports them: the first `capture` bytes, the rest skipped."""
    out: list[Any] = []
    for ts, (is_request, data) in enumerate(chunks):
        kept = data if capture is None else data[:capture]
        out += conn.feed(is_request, kept, ts)
        if len(kept) < len(data):
            out += conn.skip(is_request, len(data) - len(kept), ts)
    return ended(out + conn.close(len(chunks)))
