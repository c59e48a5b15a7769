"""Parsers for what names addresses outside ELF files: a process's memory map,
the kernel's symbols and a JIT runtime's perf map. All input is hostile (a perf
map is written by the profiled process): sizes are capped, bad lines skipped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import NamedTuple

MAX_PERF_MAP_BYTES = 64 << 20
MAX_NAME = 512  # characters kept of a perf map's or the kernel's symbol name


class Mapping(NamedTuple):
    start: int
    end: int
    offset: int  # of the file, at `start`
    path: str  # "" for anonymous memory; "[vdso]", "[stack]" and the like as the kernel names them
    executable: bool


def parse_maps(text: str) -> list[Mapping]:
    """/proc/PID/maps, in address order."""
    out = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        try:
            start_s, _, end_s = fields[0].partition("-")
            start, end, offset = int(start_s, 16), int(end_s, 16), int(fields[2], 16)
        except ValueError:
            continue
        path = fields[5].strip() if len(fields) == 6 else ""
        out.append(Mapping(start, end, offset, path, "x" in fields[1]))
    out.sort()
    return out


def find_mapping(mappings: list[Mapping], starts: list[int], address: int) -> Mapping | None:
    """The mapping holding `address`; `starts` is [m.start for m in mappings]."""
    i = bisect.bisect_right(starts, address) - 1
    if i >= 0 and address < mappings[i].end:
        return mappings[i]
    return None


class AddressNames:
    """Sorted (start, end, name) ranges; the latest entry for a start wins."""

    def __init__(self, ranges: Iterable[tuple[int, int, str]]) -> None:
        by_start: dict[int, tuple[int, str]] = {}
        for start, end, name in ranges:
            by_start[start] = (end, name)  # a JIT reusing an address: its newest code
        self._starts = sorted(by_start)
        self._ends = [by_start[s][0] for s in self._starts]
        self._names = [by_start[s][1] for s in self._starts]

    def __len__(self) -> int:
        return len(self._starts)

    def name(self, address: int) -> str | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address < self._ends[i]:
            return self._names[i]
        return None


def parse_perf_map(data: bytes) -> AddressNames:
    """A `/tmp/perf-PID.map` ("START SIZE name" in hex, one per line), as written by
    Node's --perf-basic-prof, CPython's -X perf and Java agents."""
    ranges = []
    for raw in data[:MAX_PERF_MAP_BYTES].split(b"\n"):
        fields = raw.split(None, 2)
        if len(fields) != 3:
            continue
        try:
            start, size = int(fields[0], 16), int(fields[1], 16)
        except ValueError:
            continue
        if size <= 0 or start < 0 or start + size >= 1 << 64:
            continue
        name = fields[2].decode(errors="replace").strip()[:MAX_NAME]
        ranges.append((start, start + size, name))
    return AddressNames(ranges)


def parse_kallsyms(text: str) -> AddressNames:
    """/proc/kallsyms' text symbols; each runs to the next one's address. All zero
    addresses (kptr_restrict hides them from this reader) give no names."""
    points = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[1] not in ("t", "T", "w", "W"):
            continue
        try:
            address = int(fields[0], 16)
        except ValueError:
            continue
        if address:
            module = f" {fields[3]}" if len(fields) > 3 else ""
            points.append((address, (fields[2] + module)[:MAX_NAME]))
    points.sort()
    return AddressNames(
        (a, points[i + 1][0] if i + 1 < len(points) else a + 4096, n)
        for i, (a, n) in enumerate(points)
    )
