"""Cutting a byte stream at arbitrary points, as the kernel's calls do (parser fuzzing)."""

from __future__ import annotations

import itertools


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]
