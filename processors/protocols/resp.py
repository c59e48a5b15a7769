"""Redis serialization protocol (RESP2 and RESP3), sans-I/O: commands paired with replies.

`RespStreamParser` reads one direction into top-level values, keeping only what
spans need (a value's type, a short preview, the first elements of an array),
so memory stays bounded whatever the payload. Bulk payloads it did not capture
are skipped by length. `RespConnection` pairs commands with replies in order
(pipelining, MULTI/EXEC) and leaves pub/sub deliveries and RESP3 pushes out,
so a subscriber's stream of messages never becomes a span per message.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from otel_ebpf.model import RedisExchange, RequestHead, RequestStarted, RespValue

RespOutput = RedisExchange | RequestStarted

PREVIEW: Final = 64  # bytes kept of a scalar
KEPT_ITEMS: Final = 3  # elements kept of an aggregate (command name, key, one more)
MAX_LINE: Final = 4096
MAX_DEPTH: Final = 16

_LINE_TYPES: Final = frozenset(b"+-:_,#(")  # value on the type line
_BULK_TYPES: Final = frozenset(b"$!=")  # length-prefixed payload
_ARRAY_TYPES: Final = frozenset(b"*~>")  # element count
_MAP_TYPES: Final = frozenset(b"%|")  # pair count
_ANY_TYPE: Final = _LINE_TYPES | _BULK_TYPES | _ARRAY_TYPES | _MAP_TYPES
_COMMAND_START: Final = frozenset(b"*")
_PUBSUB_DELIVERIES: Final = frozenset({b"message", b"pmessage", b"smessage"})
_SUBSCRIBE: Final = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"})


def looks_like_resp_command(data: bytes) -> bool:
    """'*<count>\r\n$': a command as every Redis client library sends it."""
    eol = data.find(b"\r\n", 0, 12)
    return (
        data[:1] == b"*" and eol > 1 and data[1:eol].isdigit() and data[eol + 2 : eol + 3] == b"$"
    )


class _Frame:
    __slots__ = ("count", "items", "kind", "remaining", "start_ts")

    def __init__(self, kind: int, count: int, remaining: int, start_ts: int) -> None:
        self.kind, self.count, self.remaining, self.start_ts = kind, count, remaining, start_ts
        self.items: list[RespValue] = []


class RespStreamParser:
    """One direction of a RESP connection."""

    def __init__(self, is_request: bool) -> None:
        self.is_request = is_request
        self._buf = bytearray()
        self._stack: list[_Frame] = []
        self._bulk_left = 0  # payload bytes plus CRLF still to come
        self._bulk: tuple[int, bytearray, int, int] | None = None  # kind, preview, length, ts
        self._value_start = 0
        self.lost = False
        self.synced = False

    @property
    def skippable(self) -> int:
        return max(self._bulk_left - 2, 0)

    def feed(self, data: bytes, ts: int) -> list[RespValue]:
        out: list[RespValue] = []
        if self.lost:
            allowed = _COMMAND_START if self.is_request else _ANY_TYPE
            if not data or data[0] not in allowed:
                return out
            self._reset()
        self._buf += data
        self._run(ts, out)
        return out

    def skip(self, n: int, ts: int) -> list[RespValue]:
        out: list[RespValue] = []
        if n <= 0 or self.lost:
            return out
        if self._bulk_left and not self._buf and n <= self._bulk_left:
            self._bulk_left -= n
            if self._bulk_left == 0:
                self._finish_bulk(ts, out)
            return out
        self._lose()
        return out

    def skip_shed(self, n: int, ts: int) -> list[RespValue]:
        """`n` bytes of whole commands or replies went unsent (the kernel shed their
        exchanges at a command's start): parsing holds, as an inline command after
        them could not find it again."""
        if self.lost or self._stack or self._bulk_left or self._buf:
            return self.skip(n, ts)
        return []

    def _reset(self) -> None:
        self.lost = False
        self._buf.clear()
        self._stack.clear()
        self._bulk_left = 0
        self._bulk = None

    def _lose(self) -> None:
        self._reset()
        self.lost = True

    def _run(self, ts: int, out: list[RespValue]) -> None:
        buf = self._buf
        pos = 0
        while pos < len(buf):
            if self._bulk_left:
                take = min(self._bulk_left, len(buf) - pos)
                _, preview, _, _ = self._bulk  # type: ignore[misc]
                room = PREVIEW - len(preview)
                if room > 0:
                    preview += buf[pos : pos + min(take, room)]
                pos += take
                self._bulk_left -= take
                if self._bulk_left == 0:
                    self._finish_bulk(ts, out)
                continue
            if not self._stack and not self._starts_value(buf[pos]):
                self._lose()  # cheap early exit for traffic that is not RESP
                return
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > MAX_LINE:
                    self._lose()
                    return
                break
            line = bytes(buf[pos:eol])
            pos = eol + 2
            if not self._stack:
                self._value_start = ts
            if not self._line(line, ts, out):
                self._lose()
                return
        del buf[:pos]

    def _starts_value(self, first: int) -> bool:
        if first in _ANY_TYPE or first == 0x0D:  # a type byte, or a blank line's CR
            return True
        return self.is_request and 0x20 < first < 0x7F  # an inline command

    def _line(self, line: bytes, ts: int, out: list[RespValue]) -> bool:
        if not line:
            return not self._stack  # stray blank line between inline commands
        kind = line[0]
        if kind in _LINE_TYPES:
            self._push(RespValue(kind, line[1 : 1 + PREVIEW], (), 0, self._start(ts), ts), ts, out)
            return True
        if kind in _BULK_TYPES or kind in _ARRAY_TYPES or kind in _MAP_TYPES:
            try:
                n = int(line[1:])
            except ValueError:
                return False
            if n < 0:  # RESP2 null bulk or null array
                self._push(RespValue(kind, b"", (), -1, self._start(ts), ts), ts, out)
            elif kind in _BULK_TYPES:
                self._bulk_left = n + 2
                self._bulk = (kind, bytearray(), n, self._start(ts))
                if n + 2 == 0:
                    self._finish_bulk(ts, out)
            elif n == 0:
                self._push(RespValue(kind, b"", (), 0, self._start(ts), ts), ts, out)
            else:
                if len(self._stack) >= MAX_DEPTH:
                    return False
                elements = 2 * n if kind in _MAP_TYPES else n
                self._stack.append(_Frame(kind, n, elements, self._start(ts)))
            return True
        if self.is_request and not self._stack and 0x20 < kind < 0x7F:
            # An inline command ("PING\r\n"), as telnet-like clients send.
            words = line.split()
            items = tuple(
                RespValue(ord("$"), w[:PREVIEW], (), 0, ts, ts) for w in words[:KEPT_ITEMS]
            )
            self._push(RespValue(ord("*"), b"", items, len(words), self._value_start, ts), ts, out)
            return True
        return False

    def _start(self, ts: int) -> int:
        return self._stack[0].start_ts if self._stack else self._value_start or ts

    def _finish_bulk(self, ts: int, out: list[RespValue]) -> None:
        kind, preview, length, start = self._bulk  # type: ignore[misc]
        self._bulk = None
        self._push(RespValue(kind, bytes(preview[:length]), (), 0, start, ts), ts, out)

    def _push(self, value: RespValue, ts: int, out: list[RespValue]) -> None:
        while self._stack:
            frame = self._stack[-1]
            if len(frame.items) < KEPT_ITEMS:
                frame.items.append(value)
            frame.remaining -= 1
            if frame.remaining > 0:
                return
            self._stack.pop()
            value = RespValue(frame.kind, b"", tuple(frame.items), frame.count, frame.start_ts, ts)
        self.synced = True
        out.append(value)


class RespConnection:
    """Both directions of one Redis connection, paired into exchanges."""

    def __init__(self, max_pending: int = 1024) -> None:
        self.requests = RespStreamParser(True)
        self.replies = RespStreamParser(False)
        self._pending: deque[tuple[RespValue, RequestStarted]] = deque()
        self.parse_errors = 0  # RESP has no recoverable errors: a loss of sync is counted
        self._max_pending = max_pending
        self._subscribed = False
        self.abandoned: list[object] = []  # tokens of commands dropped past max_pending

    def skippable(self, is_request: bool) -> int:
        return (self.requests if is_request else self.replies).skippable

    def not_protocol(self, is_request: bool) -> bool:
        parser = self.requests if is_request else self.replies
        return parser.lost and not parser.synced

    def feed(self, is_request: bool, data: bytes, ts: int) -> list[RespOutput]:
        parser = self.requests if is_request else self.replies
        return self._handle(is_request, parser.feed(data, ts))

    def skip(self, is_request: bool, n: int, ts: int) -> list[RespOutput]:
        parser = self.requests if is_request else self.replies
        return self._handle(is_request, parser.skip(n, ts))

    def skip_shed(self, is_request: bool, n: int, ts: int) -> list[RespOutput]:
        parser = self.requests if is_request else self.replies
        return self._handle(is_request, parser.skip_shed(n, ts))

    def close(self, ts: int) -> list[RedisExchange]:
        done = [RedisExchange(c, None, c.start_ts, c.end_ts, t) for c, t in self._pending]
        self._pending.clear()
        return done

    def _handle(self, is_request: bool, values: list[RespValue]) -> list[RespOutput]:
        done: list[RespOutput] = []
        for value in values:
            if is_request:
                if len(self._pending) >= self._max_pending:
                    self.abandoned.append(self._pending.popleft()[1])
                started = RequestStarted(RequestHead(value.start_ts, 0, {}))
                done.append(started)
                self._pending.append((value, started))
                name = value.items[0].text.upper() if value.items else b""
                if name in _SUBSCRIBE:
                    self._subscribed = True
            elif value.kind == ord(">") or (self._subscribed and _is_delivery(value)):
                continue  # a pushed message, not a reply to anything
            elif self._pending:
                command, token = self._pending.popleft()
                done.append(RedisExchange(command, value, command.start_ts, value.end_ts, token))
        return done


def _is_delivery(value: RespValue) -> bool:
    return (
        value.kind == ord("*") and bool(value.items) and value.items[0].text in _PUBSUB_DELIVERIES
    )
