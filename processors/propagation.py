"""Trace context carried in HTTP headers: W3C Trace Context and B3, parsed by the rules.

W3C (https://www.w3.org/TR/trace-context/): `traceparent` is
version-traceid-parentid-flags in lower-case hex; version ff is invalid;
version 00 is exactly 55 characters; a later version may append fields after
a '-'; all-zero trace or parent ids are invalid. B3 (openzipkin/b3-propagation):
single `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]` or the
X-B3-* headers; 16- or 32-character trace ids; sampled 1, 0 or d (debug).
Invalid input yields None: the request is then traced as if it carried nothing.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# The request headers trace context travels in (W3C Trace Context, B3 single and multi).
TRACE_CONTEXT_HEADERS = frozenset(
    {
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    }
)


class WireContext(NamedTuple):
    trace_id: int
    span_id: int  # the caller's span: the parent of a server span
    sampled: bool
    tracestate: str | None = None


_LOWER_HEX = re.compile(r"[0-9a-f]+")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _hex(value: str, length: int, lower_only: bool) -> int | None:
    if len(value) != length or not (_LOWER_HEX if lower_only else _HEX).fullmatch(value):
        return None
    number = int(value, 16)
    return number or None  # all zeros is invalid in both formats


def parse_traceparent(value: str, tracestate: str | None = None) -> WireContext | None:
    value = value.strip()
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version = value[:2]
    if not _LOWER_HEX.fullmatch(version) or version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    trace_id = _hex(value[3:35], 32, lower_only=True)
    span_id = _hex(value[36:52], 16, lower_only=True)
    flags = value[53:55]
    if trace_id is None or span_id is None or not _LOWER_HEX.fullmatch(flags):
        return None
    return WireContext(trace_id, span_id, bool(int(flags, 16) & 1), tracestate or None)


def _b3_trace_id(value: str) -> int | None:
    if len(value) == 16:
        return _hex(value, 16, lower_only=False)
    return _hex(value, 32, lower_only=False)


def _b3_sampled(value: str | None, default: bool = True) -> bool | None:
    if value is None or value == "":
        return default
    return {"1": True, "d": True, "true": True, "0": False, "false": False}.get(value.lower())


def parse_b3_single(value: str) -> WireContext | None:
    parts = value.strip().split("-")
    if len(parts) < 2 or len(parts) > 4:
        return None  # "0", "1", "d" alone carry a decision but no context
    trace_id, span_id = _b3_trace_id(parts[0]), _hex(parts[1], 16, lower_only=False)
    sampled = _b3_sampled(parts[2] if len(parts) > 2 else None)
    if len(parts) == 4 and _hex(parts[3], 16, lower_only=False) is None:
        return None
    if trace_id is None or span_id is None or sampled is None:
        return None
    return WireContext(trace_id, span_id, sampled)


def parse_b3_multi(headers: dict[str, str]) -> WireContext | None:
    trace_id = _b3_trace_id(headers.get("x-b3-traceid", "").strip())
    span_id = _hex(headers.get("x-b3-spanid", "").strip(), 16, lower_only=False)
    if trace_id is None or span_id is None:
        return None
    debug = headers.get("x-b3-flags", "").strip() == "1"
    sampled = _b3_sampled(headers.get("x-b3-sampled", "").strip())
    if sampled is None:
        return None
    return WireContext(trace_id, span_id, sampled or debug)


def extract(headers: dict[str, str]) -> WireContext | None:
    """W3C first (the OpenTelemetry default), then B3 single, then B3 multi."""
    if "traceparent" in headers:
        ctx = parse_traceparent(headers["traceparent"], headers.get("tracestate"))
        if ctx is not None:
            return ctx
    if "b3" in headers:
        ctx = parse_b3_single(headers["b3"])
        if ctx is not None:
            return ctx
    if "x-b3-traceid" in headers:
        return parse_b3_multi(headers)
    return None
