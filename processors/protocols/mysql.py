"""MySQL / MariaDB client/server protocol, sans-I/O: commands paired with results.

The classic protocol answers one command at a time, so a command is paired
with the response that follows it; the response is walked packet by packet
(OK, ERR, result sets with their column definitions, rows and terminators,
further result sets while SERVER_MORE_RESULTS_EXISTS is set) only far enough
to know where it ends and whether it failed. Rows are skipped by length.

One `SqlExchange` per COM_QUERY and per COM_STMT_EXECUTE (whose text comes
from the COM_STMT_PREPARE that returned its statement id); a prepare is
reported only when it fails. The handshake gives `db.namespace` and the
negotiated capabilities; TLS (SSLRequest) and compressed connections are
left alone, cleanly, as not ours to read.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Final

from otel_ebpf.model import RequestHead, RequestStarted, SqlExchange, SqlOutput
from otel_ebpf.processors.protocols.framing import (
    Frame,
    FramedConnection,
    Framer,
    NotThisProtocol,
)

KEEP_CLIENT: Final = 8192  # bytes kept of a command (the statement text)
KEEP_SERVER: Final = 512  # bytes kept of a response packet (OK/ERR/column count/terminators)
MAX_STATEMENTS: Final = 256
FULL_PACKET: Final = 0xFFFFFF  # a payload this long continues in the next packet

COM_QUIT: Final = 0x01
COM_INIT_DB: Final = 0x02
COM_QUERY: Final = 0x03
COM_STMT_PREPARE: Final = 0x16
COM_STMT_EXECUTE: Final = 0x17
COM_STMT_SEND_LONG_DATA: Final = 0x18
COM_STMT_CLOSE: Final = 0x19
_NO_RESPONSE: Final = frozenset({COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE})

CLIENT_CONNECT_WITH_DB: Final = 0x8
CLIENT_COMPRESS: Final = 0x20
CLIENT_PROTOCOL_41: Final = 0x200
CLIENT_SSL: Final = 0x800
CLIENT_DEPRECATE_EOF: Final = 0x01000000
SERVER_MORE_RESULTS_EXISTS: Final = 0x0008

OK, EOF, ERR, LOCAL_INFILE = 0x00, 0xFE, 0xFF, 0xFB


def looks_like_server_greeting(data: bytes) -> bool:
    """The server's first packet: sequence 0, protocol version 10, a version string.

    Clients that read the 4-byte header on its own show only that: a short
    length and sequence 0 as the first bytes a server sends is MySQL's shape.
    """
    if len(data) < 4 or data[2] != 0 or data[3] != 0 or not 30 <= data[0] | data[1] << 8 < 1024:
        return False
    return len(data) == 4 or (data[4] == 10 and (len(data) < 6 or 0x20 <= data[5] < 0x7F))


class _MysqlFramer(Framer):
    """3-byte little-endian length + sequence id; `kind` is the sequence id."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self._keep_bytes = keep

    def _header(self, buf: bytearray) -> tuple[int, int, int] | None:
        if len(buf) < 4:
            return None
        length = buf[0] | buf[1] << 8 | buf[2] << 16
        if length == 0 and buf[3] == 0:
            raise NotThisProtocol  # a command or response is never empty at sequence 0
        return buf[3], 4, length

    def _keep(self, kind: int, length: int) -> int:
        return self._keep_bytes

    def _resyncs(self, data: bytes) -> bool:
        # Commands start a call at sequence 0; a response's first packet is sequence 1.
        return len(data) >= 5 and data[3] in (0, 1)


def _lenenc(body: bytes, pos: int) -> tuple[int, int]:
    """A length-encoded integer at `pos`: (value, next position)."""
    first = body[pos] if pos < len(body) else 0
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first, 0)
    return int.from_bytes(body[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def _ok_status(body: bytes) -> int:
    """Status flags of an OK packet (or an OK sent with the EOF header)."""
    _, pos = _lenenc(body, 1)  # affected rows
    _, pos = _lenenc(body, pos)  # last insert id
    return int.from_bytes(body[pos : pos + 2], "little") if pos + 2 <= len(body) else 0


def _eof_status(body: bytes) -> int:
    return int.from_bytes(body[3:5], "little") if len(body) >= 5 else 0


def _error(body: bytes) -> tuple[str, str]:
    """Error number and message of an ERR packet."""
    code = int.from_bytes(body[1:3], "little") if len(body) >= 3 else 0
    message = body[9:] if body[3:4] == b"#" else body[3:]
    return str(code), message.decode("utf-8", "replace")


class _Command:
    __slots__ = ("error", "kind", "prepared", "query", "start_ts", "token")

    def __init__(self, kind: int, query: str, start_ts: int, prepared: bool, token: object):
        self.kind, self.query, self.start_ts, self.prepared = kind, query, start_ts, prepared
        self.token = token
        self.error: tuple[str, str] | None = None


# Where the response to the current command is.
_FIRST, _PREPARE_DEFS, _COLUMNS, _COLUMNS_EOF, _ROWS = range(5)


class MysqlConnection(FramedConnection[SqlOutput]):
    """Both directions of one MySQL/MariaDB connection, paired into statements."""

    def __init__(self, system: str = "mysql") -> None:
        super().__init__(_MysqlFramer(KEEP_CLIENT), _MysqlFramer(KEEP_SERVER))
        self.system = system
        self.namespace: str | None = None
        self._handshake = 0  # 0 unknown (joined mid-connection), 1 greeting seen, 2 done
        self._server_caps = 0
        self.deprecate_eof = False
        self._statements: OrderedDict[int, str] = OrderedDict()
        self._command: _Command | None = None
        self._state = _FIRST
        self._remaining = 0  # packets left in the current block (columns, parameter defs)
        self._continued = [False, False]  # the last packet each way was a full one

    def _lost_sync(self, is_request: bool, ts: int) -> list[SqlOutput]:
        self._continued = [False, False]
        command, self._command = self._command, None
        self._state = _FIRST
        if is_request or command is None or not _reported(command):
            return []
        return [self._exchange(command, ts)]  # its outcome was in the bytes we lost

    def close(self, ts: int) -> list[SqlOutput]:
        command, self._command = self._command, None
        if command is None or not _reported(command):
            return []
        return [self._exchange(command, ts, answered=False)]

    # -- packets ----------------------------------------------------------------

    def _handle(self, is_request: bool, packets: list[Frame]) -> list[SqlOutput]:
        done: list[SqlOutput] = []
        for p in packets:
            side = 0 if is_request else 1
            continued, self._continued[side] = self._continued[side], p.length == FULL_PACKET
            if continued or self.stopped:
                continue  # the rest of a payload over 16 MiB
            if is_request:
                self._client_packet(p, done)
            else:
                self._server_packet(p, done)
        return done

    def _client_packet(self, p: Frame, done: list[SqlOutput]) -> None:
        body = p.body
        if p.kind != 0:
            if self._handshake == 1 and p.kind == 1:
                self._handshake_response(body)
            return  # auth continuation, LOCAL INFILE data
        if not body:
            return
        if self._command is not None and _reported(self._command):
            # its response never ended as we saw it
            done.append(self._exchange(self._command, p.start_ts, answered=False))
        self._handshake = 2
        kind = body[0]
        self._command = None
        self._state = _FIRST
        if kind in (COM_QUERY, COM_STMT_PREPARE):
            self._start(kind, body[1:].decode("utf-8", "replace"), p.start_ts, done, False)
        elif kind == COM_STMT_EXECUTE and len(body) >= 5:
            (stmt_id,) = struct.unpack_from("<I", body, 1)
            text = self._statements.get(stmt_id, "")
            self._start(kind, text, p.start_ts, done, prepared=True)
        elif kind == COM_INIT_DB:
            self.namespace = body[1:].decode("utf-8", "replace") or self.namespace
        elif kind == COM_STMT_CLOSE and len(body) >= 5:
            self._statements.pop(struct.unpack_from("<I", body, 1)[0], None)
        elif kind not in _NO_RESPONSE:
            self._command = _Command(kind, "", p.start_ts, False, None)  # walked, not reported

    def _start(self, kind: int, text: str, ts: int, done: list[SqlOutput], prepared: bool) -> None:
        started = None
        if kind != COM_STMT_PREPARE:  # a statement prepared is walked, not reported
            started = RequestStarted(RequestHead(ts, 0, {}))
            done.append(started)
        self._command = _Command(kind, text, ts, prepared, started)

    def _handshake_response(self, body: bytes) -> None:
        if len(body) < 32:
            return
        (client_caps,) = struct.unpack_from("<I", body)
        if client_caps & CLIENT_SSL and len(body) == 32:  # SSLRequest: TLS from the next byte
            self.stopped = True
            return
        caps = client_caps & (self._server_caps or 0xFFFFFFFF)  # what both sides agreed on
        if caps & CLIENT_COMPRESS:
            self.stopped = True  # compressed framing from the next command on
            return
        self.deprecate_eof = bool(caps & CLIENT_DEPRECATE_EOF)
        if caps & CLIENT_CONNECT_WITH_DB:
            user_end = body.find(b"\0", 32)
            if user_end < 0:
                return
            pos = user_end + 1
            auth_len, pos = _lenenc(body, pos)
            pos += auth_len
            db_end = body.find(b"\0", pos)
            if db_end > pos:
                self.namespace = body[pos:db_end].decode("utf-8", "replace")

    def _greeting(self, body: bytes) -> None:
        """Protocol 10 greeting: the server's capability flags."""
        version_end = body.find(b"\0", 1)
        if version_end < 0:
            return
        if b"MariaDB" in body[1:version_end]:
            self.system = "mariadb"
        pos = version_end + 1 + 4 + 8 + 1  # thread id, scramble part 1, filler
        low = int.from_bytes(body[pos : pos + 2], "little")
        high = int.from_bytes(body[pos + 3 + 2 : pos + 3 + 4], "little")
        self._server_caps = low | high << 16
        self._handshake = 1

    def _server_packet(self, p: Frame, done: list[SqlOutput]) -> None:
        body = p.body
        if not body:
            return
        if p.kind == 0 and body[0] == 10 and self._command is None:
            self._greeting(body)
            return
        command = self._command
        if command is None:
            return  # handshake and auth exchange, or a response we joined mid-way
        first = body[0]
        if first == ERR and self._state != _PREPARE_DEFS:
            command.error = _error(body)
            self._end(p.end_ts, done)
        elif self._state == _FIRST:
            self._first_packet(p, command, done)
        elif self._state == _PREPARE_DEFS:
            self._count_down(p, done)
        elif self._state == _COLUMNS:
            self._remaining -= 1
            if self._remaining <= 0:
                self._state = _ROWS if self.deprecate_eof else _COLUMNS_EOF
        elif self._state == _COLUMNS_EOF:
            self._state = _ROWS  # the EOF after the column definitions
        elif self._state == _ROWS and first == EOF and p.length < FULL_PACKET:
            status = _ok_status(body) if self.deprecate_eof else _eof_status(body)
            self._more_or_end(status, p.end_ts, done)

    def _first_packet(self, p: Frame, command: _Command, done: list[SqlOutput]) -> None:
        body = p.body
        if command.kind == COM_STMT_PREPARE and body[0] == OK and len(body) >= 9:
            stmt_id, columns, params = struct.unpack_from("<IHH", body, 1)
            self._statements[stmt_id] = command.query
            if len(self._statements) > MAX_STATEMENTS:
                self._statements.popitem(last=False)
            eofs = 0 if self.deprecate_eof else (columns > 0) + (params > 0)
            self._remaining = columns + params + eofs
            self._state = _PREPARE_DEFS
            self._count_down(None, done, p.end_ts)
        elif body[0] == OK or (body[0] == EOF and p.length < 9):
            self._more_or_end(_ok_status(body), p.end_ts, done)
        elif body[0] == LOCAL_INFILE:
            pass  # the client sends the file; an OK or ERR follows
        else:
            self._remaining, _ = _lenenc(body, 0)  # a result set: this many columns
            self._state = _COLUMNS

    def _count_down(self, p: Frame | None, done: list[SqlOutput], ts: int = 0) -> None:
        if p is not None:
            self._remaining -= 1
            ts = p.end_ts
        if self._remaining <= 0:
            self._end(ts, done)

    def _more_or_end(self, status: int, ts: int, done: list[SqlOutput]) -> None:
        if status & SERVER_MORE_RESULTS_EXISTS:
            self._state = _FIRST  # another result set (multi-statement, CALL) follows
        else:
            self._end(ts, done)

    def _end(self, ts: int, done: list[SqlOutput]) -> None:
        command, self._command = self._command, None
        self._state = _FIRST
        if command is not None and _reported(command):
            done.append(self._exchange(command, ts))

    def _exchange(self, command: _Command, ts: int, answered: bool = True) -> SqlExchange:
        code, message = command.error if command.error else (None, None)
        return SqlExchange(
            self.system,
            command.query,
            self.namespace,
            command.start_ts,
            ts,
            answered,
            code,
            message,
            command.prepared,
            command.token,
        )


def _reported(command: _Command) -> bool:
    """Statements are reported; a prepare only when it failed; other commands never."""
    if command.kind == COM_STMT_PREPARE:
        return command.error is not None
    return command.kind in (COM_QUERY, COM_STMT_EXECUTE)
