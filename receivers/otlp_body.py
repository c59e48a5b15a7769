"""OTLP/HTTP request bodies, read within one bound: on the wire and after decompression.

Any local process can post to the receiver, so a body is hostile until parsed:
the length is ASCII digits or chunked framing (never "read until EOF"), the
bytes read never pass the bound, and decompression stops one byte past it.
Errors are `Rejected` with the HTTP status to answer (400, 411, 413, 415).
"""

from __future__ import annotations

import zlib
from email.message import Message
from io import BufferedIOBase

from otel_ebpf.processors.protocols.numbers import decimal, hexadecimal

DEFAULT_MAX_BODY = 20 << 20  # the Collector's confighttp max_request_body_size default
_CHUNK_LINE_MAX = 1024
_DROPPED_PIECE = 64 << 10  # a body not kept is read this much at a time


class Rejected(Exception):
    """A request the receiver answers with `status` and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_body(headers: Message, rfile: BufferedIOBase, limit: int, keep: bool = True) -> bytes:
    """The request body per its framing (RFC 9112 section 6), at most `limit`
    bytes. Not kept (`keep` False: a request refused before its body), it is
    read and dropped piece by piece, so the connection stays in step for the
    next request without holding the body; b"" is returned."""
    encodings = headers.get_all("Transfer-Encoding") or []
    if encodings:
        if ",".join(encodings).strip().lower() != "chunked":
            raise Rejected(400, "only chunked transfer coding is supported")
        return _read_chunked(rfile, limit, keep)
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        raise Rejected(411, "Content-Length required")
    values = {decimal(v.strip()) for value in lengths for v in value.split(",")}
    if None in values or len(values) != 1:
        raise Rejected(400, "invalid Content-Length")
    (length,) = values
    assert length is not None
    if length > limit:
        raise Rejected(413, f"request body over {limit} bytes")
    body = _read(rfile, length, keep)
    if body is None:
        raise Rejected(400, "request body shorter than its Content-Length")
    return body


def _read(rfile: BufferedIOBase, size: int, keep: bool) -> bytes | None:
    """`size` bytes (b"" when not kept); None if the stream ends before."""
    if keep:
        data = rfile.read(size)
        return data if len(data) == size else None
    while size > 0:
        piece = rfile.read(min(size, _DROPPED_PIECE))
        if not piece:
            return None
        size -= len(piece)
    return b""


def _read_chunked(rfile: BufferedIOBase, limit: int, keep: bool) -> bytes:
    body = bytearray()
    seen = 0
    while True:
        line = rfile.readline(_CHUNK_LINE_MAX + 1)
        if not line.endswith(b"\n"):
            raise Rejected(400, "malformed chunk size line")
        size = hexadecimal(line.split(b";", 1)[0].strip())
        if size is None:
            raise Rejected(400, "malformed chunk size")
        if size == 0:
            break
        seen += size
        if seen > limit:
            raise Rejected(413, f"request body over {limit} bytes")
        chunk = _read(rfile, size, keep)
        if chunk is None or rfile.read(2) != b"\r\n":
            raise Rejected(400, "truncated chunk")
        body += chunk
    while True:  # trailer fields, ignored, up to the empty line
        line = rfile.readline(_CHUNK_LINE_MAX + 1)
        if line in (b"\r\n", b"\n", b""):
            return bytes(body)
        if not line.endswith(b"\n"):
            raise Rejected(400, "malformed trailer")


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding (gzip, deflate, identity), never producing more than
    `limit` bytes: a small bomb costs us `limit`, not what it expands to."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise Rejected(415, f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    out = bytearray()
    data = raw
    try:
        while data:  # gzip allows several members one after the other
            inflater = zlib.decompressobj(wbits)
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise Rejected(413, f"request body over {limit} bytes once decompressed")
            if not inflater.eof:
                if inflater.unconsumed_tail:  # only reachable at the limit
                    raise Rejected(413, f"request body over {limit} bytes once decompressed")
                raise Rejected(400, f"truncated {encoding} body")
            data = inflater.unused_data
    except zlib.error as exc:
        raise Rejected(400, f"cannot decompress ({encoding}): {exc}") from None
    return bytes(out)
