"""W3C Trace Context and B3 parsing against the specifications' rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_ebpf.processors.propagation import (
    WireContext,
    extract,
    parse_b3_multi,
    parse_b3_single,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_valid_traceparent() -> None:
    ctx = parse_traceparent(VALID, "congo=t61rcWkgMzE")
    assert ctx == WireContext(int(TRACE, 16), int(SPAN, 16), True, "congo=t61rcWkgMzE")
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == WireContext(
        int(TRACE, 16), int(SPAN, 16), False
    )


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper case is not allowed
        f"00-{TRACE}-{SPAN.upper()}-01",
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id
        f"00-{TRACE}-{SPAN}0-01",  # long parent id
        f"00-{TRACE}-{SPAN}-1",  # short flags
        f"0g-{TRACE}-{SPAN}-01",  # non-hex version
        f"00_{TRACE}_{SPAN}_01",
        "",
    ],
)
def test_invalid_traceparent(value: str) -> None:
    assert parse_traceparent(value) is None


def test_future_version_may_append_fields() -> None:
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-holds") is not None
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01x") is None  # must be followed by '-'


def test_b3_single() -> None:
    assert parse_b3_single(f"{TRACE}-{SPAN}-1") == WireContext(int(TRACE, 16), int(SPAN, 16), True)
    assert parse_b3_single(f"{TRACE}-{SPAN}-0-{SPAN}") == WireContext(
        int(TRACE, 16), int(SPAN, 16), False
    )
    assert parse_b3_single(f"{TRACE[16:]}-{SPAN}") == WireContext(
        int(TRACE[16:], 16), int(SPAN, 16), True
    )
    assert parse_b3_single(f"{TRACE}-{SPAN}-d") is not None
    for bad in (
        "0",
        "1",
        "d",
        f"{TRACE}-{SPAN}-x",
        f"{TRACE}-{'0' * 16}-1",
        f"{TRACE}-{SPAN}-1-zz",
        f"{TRACE[:20]}-{SPAN}",
    ):
        assert parse_b3_single(bad) is None, bad


def test_b3_multi() -> None:
    headers = {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0", "x-b3-flags": "1"}
    assert parse_b3_multi(headers) == WireContext(int(TRACE, 16), int(SPAN, 16), True)  # debug wins
    assert parse_b3_multi({"x-b3-traceid": TRACE}) is None
    assert (
        parse_b3_multi({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "maybe"})
        is None
    )


def test_extract_prefers_w3c_and_falls_back() -> None:
    b3 = f"{'a' * 32}-{'b' * 16}-1"
    assert extract({"traceparent": VALID, "b3": b3}).trace_id == int(TRACE, 16)  # type: ignore[union-attr]
    assert extract({"traceparent": "garbage", "b3": b3}).trace_id == int("a" * 32, 16)  # type: ignore[union-attr]
    assert extract({"host": "x"}) is None


@given(st.text(max_size=80))
def test_never_raises(value: str) -> None:
    parse_traceparent(value)
    parse_b3_single(value)
    extract({"traceparent": value, "b3": value, "x-b3-traceid": value, "x-b3-spanid": value})
