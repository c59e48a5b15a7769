"""PostgreSQL frontend/backend protocol v3, sans-I/O: statements paired with outcomes.

One `SqlExchange` per simple Query ('Q', ended by ReadyForQuery) and per
extended-protocol Execute ('E', ended by its CommandComplete, ErrorResponse,
EmptyQueryResponse or PortalSuspended). Statement text for an Execute comes
from the Parse that named its statement (kept per connection, bounded), via
the Bind that named its portal. After an error the server skips to the next
Sync: the Executes it skipped are reported with the same error.

The startup message gives `db.namespace`; an SSLRequest answered 'S' means
the rest is TLS, and the connection is reported as not ours to parse.
COPY data and result rows are skipped by length, never buffered.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from typing import Final

from otel_ebpf.model import RequestHead, RequestStarted, SqlExchange, SqlOutput
from otel_ebpf.processors.protocols.framing import (
    Frame,
    FramedConnection,
    Framer,
    NotThisProtocol,
)

KEEP: Final = 8192  # body bytes kept of messages whose content we read
MAX_MESSAGE: Final = 1 << 30
MAX_STATEMENTS: Final = 256  # prepared statements remembered per connection
MAX_PENDING: Final = 1024

PROTOCOL_3: Final = 196608
SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102
_STARTUP_CODES: Final = frozenset({PROTOCOL_3, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST})

_FRONTEND_TYPES: Final = frozenset(b"QPBDEHSCXdcfFp")
_BACKEND_TYPES: Final = frozenset(b"RSKZTDCEIN123nstGHWdcAvV")
_READ_BODY: Final = frozenset(b"\0QPBECZ") | {0x100}  # bodies we read (0: start-up, SSL answer)


def looks_like_startup(data: bytes) -> bool:
    """A StartupMessage, SSLRequest, GSSENCRequest or CancelRequest."""
    if len(data) < 8:
        return False
    length, code = struct.unpack_from(">II", data)
    return code in _STARTUP_CODES and 8 <= length <= 10_000


SSL_ANSWER: Final = 0x100  # pseudo type of the backend's one-byte answer to SSLRequest


class _PgFramer(Framer):
    """Type byte + int32 length; the start-up messages and the SSL answer are untyped."""

    def __init__(self, frontend: bool) -> None:
        super().__init__()
        self._types = _FRONTEND_TYPES if frontend else _BACKEND_TYPES
        self.untyped_next = frontend  # the first frontend message has no type byte
        self.single_byte_next = False  # the backend's 'S'/'N' answer to SSLRequest

    def _header(self, buf: bytearray) -> tuple[int, int, int] | None:
        if self.single_byte_next:
            self.single_byte_next = False
            return SSL_ANSWER, 0, 1
        if self.untyped_next and buf[0] != 0:
            self.untyped_next = False  # joined after start-up: typed messages already
        if self.untyped_next:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from(">I", buf)
            if not 8 <= length <= 10_000:
                raise NotThisProtocol
            self.untyped_next = False
            return 0, 4, length - 4
        if len(buf) < 5:
            return None
        (length,) = struct.unpack_from(">I", buf, 1)
        if buf[0] not in self._types or not 4 <= length <= MAX_MESSAGE:
            raise NotThisProtocol
        return buf[0], 5, length - 4

    def _keep(self, kind: int, length: int) -> int:
        return KEEP if kind in _READ_BODY else 0

    def _resyncs(self, data: bytes) -> bool:
        if len(data) < 5 or data[0] not in self._types:
            return False
        length = int.from_bytes(data[1:5], "big")
        return 4 <= length <= MAX_MESSAGE


def _cstrings(body: bytes, n: int) -> list[str]:
    parts = body.split(b"\0", n)
    return [p.decode("utf-8", "replace") for p in parts[:n]] + [""] * (n - len(parts[:n]))


class _Op:
    """A statement in flight: a simple Query or an Execute."""

    __slots__ = ("error", "group", "prepared", "query", "simple", "start_ts", "token")

    def __init__(
        self, query: str, start_ts: int, group: int, simple: bool, prepared: bool, token: object
    ) -> None:
        self.query, self.start_ts, self.group = query, start_ts, group
        self.simple, self.prepared, self.token = simple, prepared, token
        self.error: tuple[str, str] | None = None


class PgConnection(FramedConnection[SqlOutput]):
    """Both directions of one PostgreSQL connection, paired into statements."""

    def __init__(self) -> None:
        self.frontend = _PgFramer(frontend=True)
        self.backend = _PgFramer(frontend=False)
        super().__init__(self.frontend, self.backend)
        self.namespace: str | None = None
        self.user: str | None = None
        self._statements: OrderedDict[str, str] = OrderedDict()
        self._portals: dict[str, tuple[str, bool]] = {}
        self._pending: deque[_Op] = deque()
        self._group = 0  # Sync/Query groups the client has opened
        self._answered_group = 0  # ... and the server has closed with ReadyForQuery
        self._parsed: tuple[str, str] | None = None  # last Parse: name, text

    def _lost_sync(self, is_request: bool, ts: int) -> list[SqlOutput]:
        if is_request:
            return []
        # Outcomes were in the bytes we lost: what was sent counts as answered
        # (statements, no error) so later answers are not paired with them.
        done: list[SqlOutput] = [self._exchange(op, ts) for op in self._pending]
        self._pending.clear()
        self._answered_group = self._group
        return done

    def close(self, ts: int) -> list[SqlExchange]:
        done = [self._exchange(op, ts, answered=False) for op in self._pending]
        self._pending.clear()
        return done

    # -- messages ---------------------------------------------------------------

    def _handle(self, is_request: bool, messages: list[Frame]) -> list[SqlOutput]:
        done: list[SqlOutput] = []
        for m in messages:
            if is_request:
                self._frontend_message(m, done)
            else:
                self._backend_message(m, done)
        return done

    def _frontend_message(self, m: Frame, done: list[SqlOutput]) -> None:
        kind, body = m.kind, m.body
        if kind == 0:
            self._startup(body)
        elif kind == ord("Q"):
            self._start(_cstrings(body, 1)[0], m.start_ts, done, simple=True, prepared=False)
            self._group += 1  # a simple query is its own group, closed by ReadyForQuery
        elif kind == ord("P"):
            name, text = _cstrings(body, 2)
            self._parsed = (name, text)
            self._statements[name] = text
            self._statements.move_to_end(name)
            if len(self._statements) > MAX_STATEMENTS:
                self._statements.popitem(last=False)
        elif kind == ord("B"):
            portal, statement = _cstrings(body, 2)
            known = self._statements.get(statement)
            # Named statements were prepared earlier; the unnamed one is re-parsed each time.
            prepared = statement != "" and not (self._parsed and self._parsed[0] == statement)
            self._portals[portal] = (known if known is not None else "", prepared)
            if len(self._portals) > MAX_STATEMENTS:
                self._portals.clear()
        elif kind == ord("E"):
            portal = _cstrings(body, 1)[0]
            text, prepared = self._portals.get(portal, ("", False))
            self._start(text, m.start_ts, done, simple=False, prepared=prepared)
        elif kind == ord("S"):
            self._group += 1
            self._parsed = None

    def _startup(self, body: bytes) -> None:
        if len(body) < 4:
            return
        (code,) = struct.unpack_from(">I", body)
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            self.backend.single_byte_next = True
            self.frontend.untyped_next = True  # the real startup message follows
        elif code == PROTOCOL_3:
            fields = body[4:].split(b"\0")
            params = dict(zip(fields[0::2], fields[1::2], strict=False))
            user = params.get(b"user")
            self.user = user.decode("utf-8", "replace") if user else None
            database = params.get(b"database") or user
            self.namespace = database.decode("utf-8", "replace") if database else None

    def _start(
        self, text: str, ts: int, done: list[SqlOutput], simple: bool, prepared: bool
    ) -> None:
        if len(self._pending) >= MAX_PENDING:
            self.abandoned.append(self._pending.popleft().token)
        started = RequestStarted(RequestHead(ts, 0, {}))
        done.append(started)
        self._pending.append(_Op(text, ts, self._group, simple, prepared, started))

    def _backend_message(self, m: Frame, done: list[SqlOutput]) -> None:
        kind = m.kind
        if kind == SSL_ANSWER:
            if m.body == b"S" or m.body == b"G":
                self.stopped = True  # TLS from here: nothing more to read
            return
        pending = self._pending
        current = pending[0] if pending and pending[0].group == self._answered_group else None
        if kind == ord("E"):
            error = _error_fields(m.body)
            if current is not None and current.error is None:
                current.error = error
                if not current.simple:
                    done.append(self._exchange(pending.popleft(), m.end_ts))
                # The server now skips to Sync: the rest of the group fails with it.
                for op in pending:
                    if op.group == self._answered_group:
                        op.error = op.error or error
        elif kind in (ord("C"), ord("I"), ord("s")):
            if current is not None and not current.simple:
                done.append(self._exchange(pending.popleft(), m.end_ts))
        elif kind == ord("Z"):
            while pending and pending[0].group <= self._answered_group:
                done.append(self._exchange(pending.popleft(), m.end_ts))
            # Clamped: the ReadyForQuery that ends start-up (or one for a group
            # sent before we were watching) closes no group of ours.
            self._answered_group = min(self._answered_group + 1, self._group)

    def _exchange(self, op: _Op, ts: int, answered: bool = True) -> SqlExchange:
        code, message = op.error if op.error else (None, None)
        return SqlExchange(
            "postgresql",
            op.query,
            self.namespace,
            op.start_ts,
            ts,
            answered,
            code,
            message,
            op.prepared,
            op.token,
        )


def _error_fields(body: bytes) -> tuple[str, str]:
    """SQLSTATE ('C') and message ('M') of an ErrorResponse."""
    code, message = "", ""
    for field in body.split(b"\0"):
        if field[:1] == b"C":
            code = field[1:].decode("ascii", "replace")
        elif field[:1] == b"M":
            message = field[1:].decode("utf-8", "replace")
    return code or "XX000", message
