"""HTTP/1.x, sans-I/O (the h11 model): feed bytes, get HttpHead/HttpEnd events.

`Http1StreamParser` follows one direction of a connection; `Http1Connection`
pairs requests with their final responses in order (keep-alive, pipelining,
100-continue, HEAD/204/304 without bodies, upgrades).

What the kernel hands us is the first bytes of each send/recv call plus the
length of what was not captured, so the parser takes `skip(n)` for bytes it
never saw. Inside a sized body that costs nothing; anywhere else the parser has
lost its place and waits for a call that starts with a message (call
boundaries are where messages start in practice). Memory is bounded by
`max_head_bytes` per direction and `max_pending` requests per connection.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

from otel_ebpf.model import (
    HttpEnd,
    HttpExchange,
    HttpHead,
    ParseError,
    ParserEvent,
    RequestStarted,
)
from otel_ebpf.processors.propagation import TRACE_CONTEXT_HEADERS
from otel_ebpf.processors.protocols.numbers import decimal, hexadecimal

HttpOutput = HttpExchange | RequestStarted

METHODS: Final = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH "
    b"PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK SEARCH REPORT PURGE".split()
)
_METHOD_NAMES: Final = frozenset(m.decode() for m in METHODS)
_MAX_METHOD_LEN: Final = max(len(m) for m in METHODS)


def known_method(method: str) -> str:
    """The method as the conventions name it: one of the known, else _OTHER."""
    return method if method in _METHOD_NAMES else "_OTHER"


_METHOD_TEXT: Final = {m: m.decode() for m in METHODS}
_STATUS_CODES: Final = {b"%03d" % code: code for code in range(1000)}  # 3DIGIT, as a table
_VERSIONS: Final = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}


def _version(token: bytes) -> str:
    """What follows "HTTP/" in a start line: "1.1" for b"HTTP/1.1"."""
    return _VERSIONS.get(token) or token[5:].decode("ascii", "replace")


_RESPONSE_PREFIX: Final = b"HTTP/1."
MAX_EARLY: Final = 4  # answers kept for requests not seen yet

# Headers kept on records: framing, span attributes and trace context. Nothing
# else leaves the parser, so credentials (Authorization, Cookie) never do.
KEPT_HEADERS: Final = frozenset(
    {
        "host",
        "user-agent",
        "content-length",
        "transfer-encoding",
        "content-type",
        "connection",
        "expect",
        "upgrade",
    }
    | TRACE_CONTEXT_HEADERS
)


_KEPT: Final = {name.encode(): name for name in KEPT_HEADERS}  # lower-case bytes -> str


class _State(enum.Enum):
    START = "start"  # at a message boundary, buffering the head
    BODY = "body"  # sized body: _remaining bytes to go
    CHUNK_SIZE = "chunk-size"  # buffering a chunk-size line
    CHUNK_DATA = "chunk-data"  # _remaining bytes of chunk data plus its CRLF
    TRAILERS = "trailers"  # buffering the trailer section after the last chunk
    UNTIL_CLOSE = "until-close"  # response body delimited by the connection closing
    LOST = "lost"  # out of sync: wait for a call that starts a message
    OPAQUE = "opaque"  # upgraded or tunnelled: not HTTP/1 any more


_CHUNK_LINE_MAX: Final = 1024


def looks_like_request(data: bytes) -> bool:
    """True when `data` starts with a known method and a space (cheap sniff)."""
    space = data.find(b" ", 0, _MAX_METHOD_LEN + 1)
    return space > 0 and data[:space] in METHODS


def looks_like_response(data: bytes) -> bool:
    return data.startswith(_RESPONSE_PREFIX)


class _HeadFields(NamedTuple):
    """What a head's bytes say, whoever sent them and whenever."""

    method: str
    target: str
    status: int
    version: str
    headers: dict[str, str]  # shared by every record of the same head: never changed
    content_length: int | None
    chunked: bool


# Heads seen lately, parsed, requests' and responses' apart: the same head
# crosses a node twice (client and server) and a keep-alive client repeats its
# own. Bounded in entries and in the size of each head; kept by the head's
# hash() (SipHash, keyed afresh in each process: a peer cannot aim a head at
# another's entry), so the credentials a head may carry (Authorization, Cookie)
# are not held past their parse. A blake2b digest cost 0.3 µs a head more.
_PARSED_REQUESTS: Final[dict[int, _HeadFields | ParseError]] = {}
_PARSED_RESPONSES: Final[dict[int, _HeadFields | ParseError]] = {}
_PARSED_MAX: Final = 512  # each
_PARSED_HEAD_MAX: Final = 1024


def _head_fields(head: bytes, is_request: bool) -> _HeadFields | ParseError:
    parsed = _PARSED_REQUESTS if is_request else _PARSED_RESPONSES
    key = hash(head)
    fields = parsed.get(key)
    if fields is None:
        fields = _parse_fields(head, is_request)
        if len(head) <= _PARSED_HEAD_MAX:
            if len(parsed) >= _PARSED_MAX:
                del parsed[next(iter(parsed))]  # the oldest
            parsed[key] = fields
    return fields


def _parse_fields(head: bytes, is_request: bool) -> _HeadFields | ParseError:
    """RFC 9112 sections 3-5: the start line and the kept header fields."""
    lines = head.split(b"\r\n")
    start = lines[0]
    method = target = ""
    status = 0
    if is_request:
        parts = start.split(b" ")
        known = _METHOD_TEXT.get(parts[0]) if len(parts) == 3 else None
        if known is None or not parts[2].startswith(b"HTTP/1."):
            return ParseError("malformed request line")
        method = known
        target = parts[1].decode("latin-1")
        version = _version(parts[2])
    else:
        parts = start.split(b" ", 2)
        code = _STATUS_CODES.get(parts[1]) if len(parts) >= 2 else None
        if code is None:
            return ParseError("malformed status line")
        version = _version(parts[0])
        status = code
    headers: dict[str, str] = {}
    content_length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1] in b" \t" or name[0] in b" \t":
            return ParseError("malformed header line")
        key = _KEPT.get(name.lower())
        if key is None:
            continue
        text = value.strip().decode("latin-1")
        if key == "content-length":
            length = decimal(text)
            if length is None or content_length not in (None, length):
                return ParseError("invalid Content-Length")
            content_length = length
        elif key == "transfer-encoding":
            chunked = text.lower().rsplit(",", 1)[-1].strip() == "chunked"
        headers[key] = text if key not in headers else headers[key] + ", " + text
    return _HeadFields(method, target, status, version, headers, content_length, chunked)


class Http1StreamParser:
    """One direction of an HTTP/1.x connection: requests or responses."""

    def __init__(
        self,
        is_request: bool,
        request_method: Callable[[], str] | None = None,
        max_head_bytes: int = 16384,
    ) -> None:
        self.is_request = is_request
        # Responses need their request's method to frame (HEAD, CONNECT).
        self._request_method = request_method or (lambda: "GET")
        self._max_head = max_head_bytes
        self._state = _State.START
        self._buf = bytearray()
        self._remaining = 0
        self._body = 0
        self._start_ts = 0
        self._start_offset = 0
        self._base = 0  # stream position of the current call's first byte
        self._last_ts = 0
        self._open = False  # a head was emitted and its end was not
        self.synced = False  # has parsed at least one head: errors after that are real

    # -- public API ---------------------------------------------------------

    @property
    def skippable(self) -> int:
        """Bytes just ahead that the parser does not need to see (body bytes)."""
        if self._state is _State.BODY:
            return self._remaining
        if self._state is _State.CHUNK_DATA:
            return max(self._remaining - 2, 0)
        return 0

    @property
    def never_synced(self) -> bool:
        """Lost before the first message: this direction is not HTTP/1."""
        return self._state is _State.LOST and not self.synced

    @property
    def lost_in_message(self) -> bool:
        """A message began but the parser lost its framing before its end."""
        return self._open and self._state is _State.LOST

    def make_opaque(self) -> None:
        """The connection was upgraded (101, CONNECT): stop parsing this direction."""
        self._state = _State.OPAQUE
        self._buf.clear()

    def feed(self, data: bytes, ts: int) -> list[ParserEvent]:
        """Take the bytes of one call, which begins at a call boundary."""
        out: list[ParserEvent] = []
        try:
            self._feed(data, ts, out)
        finally:
            self._base += len(data)
        return out

    def _feed(self, data: bytes, ts: int, out: list[ParserEvent]) -> None:
        pos, n = 0, len(data)
        state = self._state
        if state is _State.LOST:
            if not self._starts_message(data):
                if self._open:
                    self._last_ts = ts
                return
            self._close_open(out, complete=False)
            state = self._state = _State.START
        while pos < n:
            if state is _State.BODY or state is _State.CHUNK_DATA:
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                self._body += take
                self._last_ts = ts
                if self._remaining == 0:
                    if state is _State.BODY:
                        self._finish(out, ts)
                    else:
                        self._body -= 2  # the CRLF after chunk data
                        self._state = _State.CHUNK_SIZE
            elif state is _State.START:
                pos = self._feed_head(data, pos, ts, out)
            elif state is _State.CHUNK_SIZE or state is _State.TRAILERS:
                pos = self._feed_chunk_meta(data, pos, ts, out)
            elif state is _State.UNTIL_CLOSE:
                self._body += n - pos
                self._last_ts = ts
                pos = n
            else:  # LOST reached mid-call, or OPAQUE
                pos = n
            state = self._state

    def skip(self, n: int, ts: int) -> list[ParserEvent]:
        """Account for `n` bytes that moved but were not captured."""
        out: list[ParserEvent] = []
        if n <= 0:
            return out
        self._base += n
        state = self._state
        if state is _State.BODY or state is _State.CHUNK_DATA:
            take = min(self._remaining, n)
            self._remaining -= take
            self._body += take
            self._last_ts = ts
            if take < n:  # the gap runs past this body: the next head is lost
                if state is _State.BODY:
                    self._finish(out, ts)
                self._lose()
            elif self._remaining == 0:
                if state is _State.BODY:
                    self._finish(out, ts)
                else:
                    self._body -= 2
                    self._state = _State.CHUNK_SIZE
        elif state is _State.UNTIL_CLOSE:
            self._body += n
            self._last_ts = ts
        elif state is _State.START and self._buf:
            self._emit_truncated_head(out, ts)
        elif state is not _State.OPAQUE:
            if self._open:
                self._last_ts = ts
            self._lose()
        return out

    def eof(self, ts: int) -> list[ParserEvent]:
        """The connection closed: a body read until close ends here."""
        out: list[ParserEvent] = []
        if self._state is _State.UNTIL_CLOSE:
            self._finish(out, self._last_ts or ts)
        else:
            self._close_open(out, complete=False)
        self._buf.clear()
        return out

    # -- internals ----------------------------------------------------------

    def _starts_message(self, data: bytes) -> bool:
        return looks_like_request(data) if self.is_request else looks_like_response(data)

    def _lose(self) -> None:
        self._state = _State.LOST
        self._buf.clear()

    def _close_open(self, out: list[ParserEvent], complete: bool) -> None:
        if self._open:
            out.append(HttpEnd(self._last_ts, self._body, complete))
            self._open = False

    def _finish(self, out: list[ParserEvent], ts: int) -> None:
        out.append(HttpEnd(ts, self._body, True))
        self._open = False
        self._state = _State.START

    def _prefix_ok(self) -> bool:
        """Can the buffered bytes still be the start of a message?"""
        buf = self._buf
        if self.is_request:
            space = buf.find(b" ", 0, _MAX_METHOD_LEN + 1)
            if space < 0:
                return len(buf) <= _MAX_METHOD_LEN and any(m.startswith(buf) for m in METHODS)
            return bytes(buf[:space]) in METHODS
        k = min(len(buf), len(_RESPONSE_PREFIX))
        return buf[:k] == _RESPONSE_PREFIX[:k]

    def _not_http(self) -> ParseError:
        return ParseError("not an HTTP/1 " + ("request" if self.is_request else "response"))

    def _feed_head(self, data: bytes, pos: int, ts: int, out: list[ParserEvent]) -> int:
        buf = self._buf
        before = len(buf)
        if not before:
            self._start_ts = ts
            self._start_offset = self._base + pos
            end = data.find(b"\r\n\r\n", pos)
            if end >= 0:  # the usual case: a whole head in one call, not buffered
                head = data[pos:end]
                if not self._starts_message(head):
                    out.append(self._not_http())
                    self._lose()
                    return len(data)
                self._begin_message(head, ts, out, truncated=False)
                return end + 4
        buf += data[pos:]
        if not self._prefix_ok():
            out.append(self._not_http())
            self._lose()
            return len(data)
        end = buf.find(b"\r\n\r\n", max(before - 3, 0))
        if end < 0:
            if len(buf) > self._max_head:
                out.append(ParseError("header block too large"))
                self._lose()
            return len(data)
        head_bytes = bytes(buf[:end])
        buf.clear()
        self._begin_message(head_bytes, ts, out, truncated=False)
        return pos + end + 4 - before

    def _emit_truncated_head(self, out: list[ParserEvent], ts: int) -> None:
        """The head was cut by the capture size: keep its complete lines."""
        cut = self._buf.rfind(b"\r\n")
        head_bytes = bytes(self._buf[:cut]) if cut > 0 else b""
        self._buf.clear()
        if not head_bytes or not self._starts_message(head_bytes):
            self._lose()
            return
        self._begin_message(head_bytes, ts, out, truncated=True)
        if self._state is not _State.OPAQUE:
            # Framing headers may be among the lost ones: wait for the next message.
            self._last_ts = ts
            self._state = _State.LOST

    def _begin_message(self, head: bytes, ts: int, out: list[ParserEvent], truncated: bool) -> None:
        parsed = self._parse_head(head, truncated)
        if isinstance(parsed, ParseError):
            out.append(parsed)
            self._lose()
            return
        record, framing = parsed
        self.synced = True
        self._body = 0
        self._last_ts = ts
        out.append(record)
        interim = not record.is_request and 100 <= record.status < 200
        if interim:  # 1xx: no body, and not the final response
            if record.status == 101:
                self.make_opaque()
            else:
                self._state = _State.START
            return
        self._open = True
        kind, length = framing
        if kind == "length":
            if length == 0:
                self._finish(out, ts)
            else:
                self._remaining = length
                self._state = _State.BODY
        elif kind == "chunked":
            self._state = _State.CHUNK_SIZE
        elif kind == "close":
            self._state = _State.UNTIL_CLOSE
        else:  # tunnel
            self._finish(out, ts)
            self.make_opaque()

    def _parse_head(
        self, head: bytes, truncated: bool
    ) -> tuple[HttpHead, tuple[str, int]] | ParseError:
        fields = _head_fields(head, self.is_request)
        if isinstance(fields, ParseError):
            return fields
        record = HttpHead(
            self.is_request,
            fields.method,
            fields.target,
            fields.status,
            fields.version,
            fields.headers,
            self._start_ts,
            truncated,
            self._start_offset,
        )
        return record, self._framing(fields.status, fields.content_length, fields.chunked)

    def _framing(self, status: int, content_length: int | None, chunked: bool) -> tuple[str, int]:
        """RFC 9112 section 6.3: how this message's body is delimited."""
        if not self.is_request:
            method = self._request_method()
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                return ("length", 0)
            if method == "CONNECT" and 200 <= status < 300:
                return ("tunnel", 0)
        if chunked:
            return ("chunked", 0)
        if content_length is not None:
            return ("length", content_length)
        return ("length", 0) if self.is_request else ("close", 0)

    def _feed_chunk_meta(self, data: bytes, pos: int, ts: int, out: list[ParserEvent]) -> int:
        buf = self._buf
        before = len(buf)
        buf += data[pos:]
        self._last_ts = ts
        if self._state is _State.CHUNK_SIZE:
            eol = buf.find(b"\n")
            if eol < 0:
                if len(buf) > _CHUNK_LINE_MAX:
                    self._lose()
                return len(data)
            size = hexadecimal(bytes(buf[:eol]).split(b";", 1)[0].strip())
            if size is None:
                out.append(ParseError("malformed chunk size"))
                self._lose()
                return len(data)
            buf.clear()
            if size == 0:
                self._state = _State.TRAILERS
            else:
                self._remaining = size + 2
                self._state = _State.CHUNK_DATA
            return pos + (eol + 1 - before)
        # TRAILERS: an empty line, or trailer fields ending in an empty line.
        if buf.startswith(b"\r\n") or buf.startswith(b"\n"):
            used = 2 if buf.startswith(b"\r\n") else 1
        else:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self._max_head:
                    self._lose()
                return len(data)
            used = end + 4
        buf.clear()
        self._finish(out, ts)
        return pos + (used - before)


class Http1Connection:
    """Both directions of one HTTP/1.x connection, paired into exchanges.

    A client's answer can reach us before its request: the kernel reports a
    send once the bytes are delivered, and a client that reads on another
    thread (Go's net/http does) may have read the answer by then. An answer
    with no request waiting is kept (a few at a time) and given to the next
    request that began before it; one that began later cannot be its request.
    """

    def __init__(
        self,
        max_pending: int = 64,
        max_head_bytes: int = 16384,
    ) -> None:
        self.requests = Http1StreamParser(True, max_head_bytes=max_head_bytes)
        self.responses = Http1StreamParser(False, self._method_awaiting_response, max_head_bytes)
        self._pending: deque[_Pending] = deque()
        self._max_pending = max_pending
        self._response: HttpHead | None = None
        self._early: deque[_Answer] = deque(maxlen=MAX_EARLY)  # answers ahead of requests
        self.parse_errors = 0
        self.abandoned: list[object] = []  # tokens of requests dropped past max_pending

    def _awaiting(self) -> _Pending | None:
        """The request the next response answers."""
        for p in self._pending:
            if p.answer is None:
                return p
        return None

    def _method_awaiting_response(self) -> str:
        p = self._awaiting()
        return p.head.method if p else "GET"

    def not_protocol(self, is_request: bool) -> bool:
        """The stream's first bytes in this direction were not HTTP/1."""
        return (self.requests if is_request else self.responses).never_synced

    def skippable(self, is_request: bool) -> int:
        return (self.requests if is_request else self.responses).skippable

    def feed(self, is_request: bool, data: bytes, ts: int) -> list[HttpOutput]:
        """Requests started (RequestStarted) and exchanges ended by these bytes, in
        stream order."""
        parser = self.requests if is_request else self.responses
        return self._handle(is_request, parser.feed(data, ts))

    def skip(self, is_request: bool, n: int, ts: int) -> list[HttpOutput]:
        parser = self.requests if is_request else self.responses
        return self._handle(is_request, parser.skip(n, ts))

    def skip_shed(self, is_request: bool, n: int, ts: int) -> list[HttpOutput]:
        """A shed request's bytes: its next request line resyncs."""
        return self.skip(is_request, n, ts)

    def close(self, ts: int) -> list[HttpOutput]:
        """End of connection: finish what can be finished, report the rest."""
        done = self._handle(True, self.requests.eof(ts))
        done += self._handle(False, self.responses.eof(ts))
        while self._pending:
            p = self._pending.popleft()
            done.append(p.exchange(*p.answer) if p.answer else p.exchange(None, 0, p.end_ts))
        return done

    def _handle(self, is_request: bool, events: list[ParserEvent]) -> list[HttpOutput]:
        done: list[HttpOutput] = []
        for ev in events:
            if isinstance(ev, ParseError):
                # Before the first message this only says "not HTTP/1": not an error.
                if (self.requests if is_request else self.responses).synced:
                    self.parse_errors += 1
            elif isinstance(ev, HttpHead):
                if is_request:
                    self._request(ev, done)
                elif ev.status == 101:  # switched protocols: the exchange ends here
                    self.requests.make_opaque()
                    if self._pending:
                        done.append(self._pending.popleft().exchange(ev, 0, ev.start_ts))
                elif ev.status >= 200:
                    self._response = ev
                    if ev.status < 300 and self._method_awaiting_response() == "CONNECT":
                        self.requests.make_opaque()
            elif is_request:
                for p in self._pending:
                    if not p.ended:
                        p.body, p.end_ts, p.ended = ev.body_bytes, ev.end_ts, True
                        break
                if self._pending and self._pending[0].answer is not None:
                    self._flush(done)
            elif self._response is not None:
                response, self._response = self._response, None
                waiting = self._awaiting()
                if waiting is None or waiting.head.start_ts > response.start_ts:
                    self._early.append(_Answer(response, ev.body_bytes, ev.end_ts))
                elif waiting is self._pending[0]:  # the usual case, in order
                    self._pending.popleft()
                    done.append(waiting.exchange(response, ev.body_bytes, ev.end_ts))
                else:  # after a request still waiting for its own body
                    waiting.answer = _Answer(response, ev.body_bytes, ev.end_ts)
        return done

    def _request(self, head: HttpHead, done: list[HttpOutput]) -> None:
        if len(self._pending) >= self._max_pending:
            self.abandoned.append(self._pending.popleft().token)
        # A new request on a connection whose last response lost its
        # framing means that response has ended.
        if self.responses.lost_in_message:
            done += self._handle(False, self.responses.eof(head.start_ts))
        started = RequestStarted(head)
        done.append(started)
        p = _Pending(head, started)
        while self._early and self._early[0].head.start_ts < head.start_ts:
            self._early.popleft()  # answers to requests we never saw
        if self._early:
            p.answer, p.early = self._early.popleft(), True
        self._pending.append(p)

    def _flush(self, done: list[HttpOutput]) -> None:
        """Report answered requests in order; an answer that came before its
        request waits for the request's end (its body size)."""
        while self._pending:
            p = self._pending[0]
            if p.answer is None or (p.early and not p.ended):
                return
            self._pending.popleft()
            done.append(p.exchange(*p.answer))


class _Answer(NamedTuple):
    head: HttpHead
    body: int
    end_ts: int


class _Pending:
    __slots__ = ("answer", "body", "early", "end_ts", "ended", "head", "token")

    def __init__(self, head: HttpHead, token: object) -> None:
        self.head = head
        self.token = token
        self.body = 0
        self.end_ts = head.start_ts
        self.ended = False
        self.answer: _Answer | None = None
        self.early = False  # the answer came before the request

    def exchange(self, response: HttpHead | None, body: int, end_ts: int) -> HttpExchange:
        token = self.token
        if isinstance(token, RequestStarted) and token.context is not None:
            token = token.context  # given by the tracker already: no copy to swap it in
        return HttpExchange(
            self.head,
            self.body,
            response,
            body,
            self.head.start_ts,
            end_ts,
            token,
            self.end_ts if self.ended else 0,
        )
