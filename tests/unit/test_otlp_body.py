"""OTLP/HTTP bodies: framing and decompression within one bound (pure logic)."""

from __future__ import annotations

import gzip
import io
import zlib
from email.message import Message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_ebpf.receivers.otlp_body import Rejected, decompress, read_body

LIMIT = 1 << 16


def headers(**fields: str | list[str]) -> Message:
    m = Message()
    for name, value in fields.items():
        for v in [value] if isinstance(value, str) else value:
            m[name.replace("_", "-")] = v
    return m


def status(h: Message, body: bytes, limit: int = LIMIT) -> int | bytes:
    try:
        return read_body(h, io.BytesIO(body), limit)
    except Rejected as exc:
        return exc.status


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        ("-1", 400),
        ("abc", 400),
        ("\xb2", 400),
        ("+5", 400),
        ("1_0", 400),
        (" 5", b"hello"),
        (str(LIMIT + 1), 413),
        ("10", 400),  # shorter than announced
        (["5", "6"], 400),
        (["5", "5"], b"hello"),
    ],
)
def test_content_length(length: str | list[str], expected: int | bytes) -> None:
    assert status(headers(Content_Length=length), b"hello") == expected


def test_a_missing_length_is_411_and_chunked_is_read_within_the_bound() -> None:
    assert status(headers(), b"hello") == 411
    chunked = headers(Transfer_Encoding="chunked")
    assert status(chunked, b"5\r\nhello\r\n3;ext=1\r\n!!!\r\n0\r\nX-T: 1\r\n\r\n") == b"hello!!!"
    assert status(chunked, b"-5\r\nhello\r\n0\r\n\r\n") == 400
    assert status(chunked, b"ffffffff\r\n") == 413
    assert status(chunked, b"5\r\nhel") == 400
    assert status(headers(Transfer_Encoding="gzip, chunked"), b"") == 400


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        ({"Content_Length": str(200_000)}, b"x" * 200_000),
        ({"Transfer_Encoding": "chunked"}, b"30d40\r\n" + b"x" * 200_000 + b"\r\n0\r\n\r\n"),
    ],
)
def test_a_body_not_kept_is_read_past_and_dropped(fields: dict[str, str], body: bytes) -> None:
    """A refused request's body: consumed to its end (the next request's bytes
    are next on the stream), nothing kept; its framing is checked all the same."""
    stream = io.BytesIO(body + b"NEXT")
    assert read_body(headers(**fields), stream, 1 << 20, keep=False) == b""
    assert stream.read() == b"NEXT"
    with pytest.raises(Rejected) as short:
        read_body(headers(**fields), io.BytesIO(body[:-10]), 1 << 20, keep=False)
    assert short.value.status == 400
    with pytest.raises(Rejected) as large:
        read_body(headers(**fields), io.BytesIO(body), 100_000, keep=False)
    assert large.value.status == 413


def test_decompression_stops_at_the_bound() -> None:
    payload = b"x" * 1000
    assert decompress(gzip.compress(payload), "gzip", LIMIT) == payload
    assert decompress(zlib.compress(payload), "deflate", LIMIT) == payload
    assert decompress(gzip.compress(b"a") + gzip.compress(b"b"), "gzip", LIMIT) == b"ab"
    bomb = gzip.compress(bytes(50 << 20))  # 50 MiB of zeros in about 50 KB
    assert len(bomb) < 100_000
    with pytest.raises(Rejected) as err:
        decompress(bomb, "gzip", LIMIT)
    assert err.value.status == 413
    for broken, encoding, code in (
        (b"not gzip", "gzip", 400),
        (gzip.compress(payload)[:-10], "gzip", 400),
        (payload, "br", 415),
    ):
        with pytest.raises(Rejected) as err:
            decompress(broken, encoding, LIMIT)
        assert err.value.status == code
    assert decompress(payload, "identity", LIMIT) == payload


@given(st.binary(max_size=2000), st.sampled_from(["gzip", "deflate", "x-gzip"]))
def test_any_body_decompresses_or_is_rejected(raw: bytes, encoding: str) -> None:
    try:
        assert len(decompress(raw, encoding, 4096)) <= 4096
    except Rejected as exc:
        assert exc.status in (400, 413)
