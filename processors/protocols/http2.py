"""HTTP/2 (and gRPC over it), sans-I/O: frames, streams, HPACK; one record per stream.

Header blocks are decoded with the `hpack` library, one decoder per direction,
fed every block in order: HPACK's dynamic table is shared state, so a block
we did not see whole (cut by the capture size, lost sync) makes every later
block of that direction untrustworthy. From then on that direction's headers
are not decoded and new streams are counted, not reported. For the same
reason a connection must be seen from its preface: joined mid-connection, the
first frames are not a preface and the parser declines the connection (the
tracker then stops the kernel sending its bytes).

A stream ends at the server's END_STREAM (on DATA or trailers) or at a
RST_STREAM from either side. gRPC's status comes from the trailers (or a
trailers-only response).

A client's response can reach us before its request: the kernel reports a
send only after the bytes were delivered, and a client that reads on another
thread (gRPC, Go) may have read the answer by then. A response for a stream
the client has not opened yet is kept (a few at a time) until its request
arrives; the exchange is reported when the request's END_STREAM is seen too.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import hpack

from otel_ebpf.model import Declined, Http2Exchange, RequestHead, RequestStarted
from otel_ebpf.processors.propagation import TRACE_CONTEXT_HEADERS
from otel_ebpf.processors.protocols.framing import (
    Frame,
    FramedConnection,
    Framer,
    NotThisProtocol,
)
from otel_ebpf.processors.protocols.numbers import decimal

H2Output = Http2Exchange | RequestStarted

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
# HPACK dynamic tables we keep, per direction: the default is 4 KiB and clients
# rarely announce more than 64 KiB; a connection announcing more is declined
# (the table is ours to hold, for as long as the connection lives).
MAX_HPACK_TABLE: Final = 64 << 10
_PREFACE_KIND: Final = -2
MAX_FRAME: Final = 1 << 24
MAX_BLOCK: Final = 64 * 1024  # header block bytes kept (and decoded) per stream
MAX_STREAMS: Final = 1024
MAX_EARLY: Final = 16  # responses kept for requests not seen yet
_KEPT: Final = frozenset({"content-type", "user-agent", "grpc-status", "grpc-message"}) | (
    TRACE_CONTEXT_HEADERS
)
GRPC_STATUS: Final = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


def looks_like_server_settings(data: bytes) -> bool:
    """A server's first bytes: a SETTINGS frame on stream 0 (sent before it reads anything)."""
    if len(data) < 9:
        return False
    length = int.from_bytes(data[0:3], "big")
    return data[3] == SETTINGS and data[4] == 0 and data[5:9] == b"\0\0\0\0" and length % 6 == 0


class _Stream:
    __slots__ = (
        "bytes",
        "ended",
        "grpc_message",
        "grpc_status",
        "request",
        "start_ts",
        "status",
        "token",
    )

    def __init__(self, request: dict[str, str], start_ts: int, token: object) -> None:
        self.request, self.start_ts, self.token = request, start_ts, token
        self.status: int | None = None
        self.grpc_status: int | None = None
        self.grpc_message: str | None = None
        self.bytes = [0, 0]  # request, response DATA bytes
        self.ended: tuple[int, bool] | None = None  # (ts, reset) of an early response's end


class _H2Framer(Framer):
    """9-byte frame headers; the client's stream opens with the 24-byte preface.

    `kind` packs type | flags << 8 | stream id << 16.
    """

    def __init__(self, client: bool) -> None:
        super().__init__()
        self.expect_preface = client

    def _header(self, buf: bytearray) -> tuple[int, int, int] | None:
        if self.expect_preface:
            if not PREFACE.startswith(bytes(buf[:24])):
                raise NotThisProtocol
            if len(buf) < 24:
                return None
            self.expect_preface = False
            return _PREFACE_KIND, 24, 0
        if len(buf) < 9:
            return None
        length = int.from_bytes(buf[0:3], "big")
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        return buf[3] | buf[4] << 8 | stream << 16, 9, length

    def _keep(self, kind: int, length: int) -> int:
        frame_type = kind & 0xFF
        if kind == _PREFACE_KIND or frame_type == DATA:
            return 0
        return min(length, MAX_BLOCK)

    def _resyncs(self, data: bytes) -> bool:
        """A call that starts with a plausible frame header (writers write whole frames)."""
        return (
            len(data) >= 9
            and data[3] <= CONTINUATION
            and int.from_bytes(data[0:3], "big") <= MAX_FRAME
            and data[5] & 0x80 == 0
        )


class Http2Connection(FramedConnection[H2Output]):
    """Both directions of one HTTP/2 connection, streams paired into exchanges."""

    def __init__(self) -> None:
        super().__init__(_H2Framer(client=True), _H2Framer(client=False))
        self._decoders = {True: hpack.Decoder(), False: hpack.Decoder()}
        self.untrusted = {True: False, False: False}  # that direction's HPACK state is lost
        self._blocks: dict[bool, tuple[int, int, bytearray, int, int, bool] | None] = {
            True: None,
            False: None,
        }
        self._streams: OrderedDict[int, _Stream] = OrderedDict()
        self._early: OrderedDict[int, _Stream] = OrderedDict()  # responses ahead of requests
        self._last_request_sid = 0  # highest client stream whose request head was seen
        self.streams_undecoded = 0  # streams not reported: their headers could not be trusted

    def close(self, ts: int) -> list[H2Output]:
        streams = list(self._streams.items())
        return [
            self._ended(sid, s) if s.ended else self._exchange(sid, s, ts, ended=False)
            for sid, s in streams
        ]

    # -- frames ------------------------------------------------------------------

    def _handle(self, is_request: bool, frames: list[Frame]) -> list[H2Output]:
        done: list[H2Output] = []
        for f in frames:
            if f.kind != _PREFACE_KIND:
                self._frame(is_request, f, done)
        return done

    def _lost_sync(self, is_request: bool, ts: int) -> list[H2Output]:
        # Header bytes may have gone by unseen: the HPACK table is lost for good, an
        # error even when the capture cut it (counted already when malformed).
        gap = self._framers[is_request].lost_in_gap
        self._untrust(is_request, counted=not gap)
        return []

    def _untrust(self, is_request: bool, counted: bool = False) -> None:
        if not self.untrusted[is_request]:
            self.untrusted[is_request] = True
            if not counted:  # a loss of sync is counted where it is noticed
                self.parse_errors += 1
        self._blocks[is_request] = None

    def _frame(self, is_request: bool, f: Frame, done: list[H2Output]) -> None:
        frame_type, flags, sid = f.kind & 0xFF, (f.kind >> 8) & 0xFF, f.kind >> 16
        block = self._blocks[is_request]
        if block is not None and frame_type != CONTINUATION:
            self._untrust(is_request)  # a header block must be contiguous
            block = None
        if frame_type == HEADERS:
            body = f.body
            if flags & PADDED:
                pad = body[0] if body else 0
                if len(f.body) != f.length:  # cut by the capture: the padding is past it
                    body = body[1:]
                elif pad < len(body):
                    body = body[1 : len(body) - pad]
                else:  # padding as long as the payload or longer: malformed (RFC 9113 6.2)
                    self._untrust(is_request)
                    return
            if flags & PRIORITY_FLAG:
                body = body[5:]
            whole = len(f.body) == f.length
            self._blocks[is_request] = (sid, flags, bytearray(body), f.start_ts, f.offset, whole)
            if flags & END_HEADERS:
                self._end_block(is_request, done, f.end_ts)
        elif frame_type == CONTINUATION and block is not None:
            block[2].extend(f.body)
            if len(f.body) != f.length:
                self._blocks[is_request] = (*block[:5], False)
            if flags & END_HEADERS:
                self._end_block(is_request, done, f.end_ts)
        elif frame_type == DATA:
            stream = self._stream(is_request, sid)
            if stream is not None:
                stream.bytes[0 if is_request else 1] += f.length
                if flags & END_STREAM:
                    self._end_stream(is_request, sid, stream, f.end_ts, done)
        elif frame_type == RST_STREAM:
            stream = self._stream(is_request, sid)
            if stream is not None:
                self._end_stream(False, sid, stream, f.end_ts, done, reset=True)
        elif frame_type == SETTINGS and not flags & 0x1:
            for i in range(0, len(f.body) - 5, 6):
                if int.from_bytes(f.body[i : i + 2], "big") == SETTINGS_HEADER_TABLE_SIZE:
                    # Our peer's encoder may use up to what this side allows.
                    size = int.from_bytes(f.body[i + 2 : i + 6], "big")
                    if size > MAX_HPACK_TABLE:
                        raise Declined(f"HPACK table of {size} bytes announced")
                    self._decoders[not is_request].max_allowed_table_size = size
        elif frame_type == PUSH_PROMISE:
            self._untrust(not is_request)  # its header block would need decoding too

    def _end_block(self, is_request: bool, done: list[H2Output], ts: int) -> None:
        block = self._blocks[is_request]
        self._blocks[is_request] = None
        assert block is not None
        sid, flags, data, start_ts, offset, whole = block
        headers = self._decode(is_request, bytes(data), whole)
        if is_request:
            self._last_request_sid = max(self._last_request_sid, sid)
            if headers is None:
                self.streams_undecoded += 1
                self._early.pop(sid, None)
            else:
                self._request(sid, headers, start_ts, offset, done)
                stream = self._streams.get(sid)
                if flags & END_STREAM and stream is not None:
                    self._end_stream(True, sid, stream, ts, done)
            return
        if headers is None:
            return
        stream = self._stream(False, sid)
        if stream is None:
            return
        if ":status" in headers and stream.status is None:
            stream.status = decimal(headers[":status"])
        if "grpc-status" in headers:
            code = decimal(headers["grpc-status"])
            stream.grpc_status = 2 if code is None else code  # 2: UNKNOWN
            stream.grpc_message = headers.get("grpc-message")
        if flags & END_STREAM:
            self._end_stream(False, sid, stream, ts, done)

    def _stream(self, is_request: bool, sid: int) -> _Stream | None:
        """The open stream `sid`; for a response, possibly one whose request is still to come."""
        stream = self._streams.get(sid)
        if stream is not None or is_request or sid & 1 == 0 or sid <= self._last_request_sid:
            return stream
        stream = self._early.get(sid)
        if stream is None:
            if len(self._early) >= MAX_EARLY:
                self._early.popitem(last=False)
            stream = self._early[sid] = _Stream({}, 0, None)
        return stream

    def _end_stream(
        self,
        is_request: bool,
        sid: int,
        stream: _Stream,
        ts: int,
        done: list[H2Output],
        reset: bool = False,
    ) -> None:
        """The server's end (or a reset) ends an exchange; an early response's waits
        for its request's END_STREAM so that the request's size is known."""
        if sid in self._early:
            if stream.ended is None:
                stream.ended = (ts, reset)
        elif stream.ended is not None:
            if is_request or reset:
                done.append(self._ended(sid, stream))
        elif not is_request or reset:
            done.append(self._exchange(sid, stream, ts, reset=reset))

    def _ended(self, sid: int, stream: _Stream) -> Http2Exchange:
        assert stream.ended is not None
        ts, reset = stream.ended
        return self._exchange(sid, stream, ts, reset=reset)

    def _decode(self, is_request: bool, block: bytes, whole: bool) -> dict[str, str] | None:
        if self.untrusted[is_request]:
            return None
        if not whole:
            self._untrust(is_request)
            return None
        try:
            pairs = self._decoders[is_request].decode(block, raw=True)
        except (hpack.HPACKError, ValueError, IndexError, UnicodeError):
            self._untrust(is_request)
            return None
        out: dict[str, str] = {}
        for name, value in pairs:
            key = name.decode("latin-1").lower()
            if key.startswith(":") or key in _KEPT:
                out[key] = value.decode("latin-1")
        return out

    def _request(
        self, sid: int, headers: dict[str, str], start_ts: int, offset: int, done: list[H2Output]
    ) -> None:
        if sid in self._streams:
            return  # request trailers
        if len(self._streams) >= MAX_STREAMS:
            self.abandoned.append(self._streams.popitem(last=False)[1].token)
        kept = {k: v for k, v in headers.items() if not k.startswith(":")}
        token = RequestStarted(RequestHead(start_ts, offset, kept))
        done.append(token)
        stream = self._early.pop(sid, None) or _Stream({}, 0, None)
        stream.request, stream.start_ts, stream.token = headers, start_ts, token
        self._streams[sid] = stream

    def _exchange(
        self, sid: int, s: _Stream, ts: int, reset: bool = False, ended: bool = True
    ) -> Http2Exchange:
        self._streams.pop(sid, None)
        h = s.request
        return Http2Exchange(
            sid,
            h.get(":method", ""),
            h.get(":path", ""),
            h.get(":authority", ""),
            h.get(":scheme", "http"),
            {k: v for k, v in h.items() if not k.startswith(":")},
            s.status,
            s.grpc_status,
            s.grpc_message,
            s.bytes[0],
            s.bytes[1],
            s.start_ts,
            ts,
            reset,
            ended,
            s.token,
        )
