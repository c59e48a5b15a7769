"""Length-prefixed message framing shared by the database protocols.

A `Framer` reads one direction of a stream into `Frame`s. Subclasses say how
a header reads (`_header`) and how much of a body is worth keeping
(`_keep`); everything else — bodies split across calls, bodies skipped by
length when the kernel sent only their start, losing sync on uncaptured
header bytes and finding it again at a call boundary — is here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

R = TypeVar("R")  # the record type a protocol produces


class Frame(NamedTuple):
    kind: int  # protocol-specific message type (PostgreSQL type byte, MySQL sequence id)
    body: bytes  # the kept prefix of the body
    length: int  # the body's full length
    start_ts: int
    end_ts: int
    offset: int = 0  # stream position of the message's first byte, from where parsing began


class NotThisProtocol(Exception):
    """The bytes where a header should be cannot be one."""


class Framer:
    """One direction of a length-prefixed protocol, fed as the kernel saw it."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._kind = -1  # message in progress; -1 between messages
        self._left = 0  # body bytes still to come
        self._length = 0
        self._body = bytearray()
        self._want = 0  # body bytes worth keeping of the message in progress
        self._start = 0
        self._offset = 0  # stream position of the message in progress
        self._position = 0  # bytes fed or skipped so far
        self.lost = False
        self.lost_in_gap = False  # ... because a header fell in bytes not captured
        self.synced = False  # a whole message was framed: the stream is this protocol

    # -- what subclasses define ----------------------------------------------

    def _header(self, buf: bytearray) -> tuple[int, int, int] | None:
        """(kind, header length, body length) at buf[0], None when more bytes are needed."""
        raise NotImplementedError

    def _keep(self, kind: int, length: int) -> int:
        """Body bytes to keep of a message of this kind."""
        raise NotImplementedError

    def _resyncs(self, data: bytes) -> bool:
        """After lost bytes: does this call start with a plausible header?"""
        return False

    # -- the stream -----------------------------------------------------------

    @property
    def skippable(self) -> int:
        """Bytes of the current body the kernel need not send."""
        if self._kind < 0 or len(self._body) < self._want:
            return 0
        return self._left

    def feed(self, data: bytes, ts: int) -> list[Frame]:
        out: list[Frame] = []
        self._position += len(data)
        if self.lost:
            if not self._resyncs(data):
                return out
            self.lost = self.lost_in_gap = False
        pos = 0
        while pos < len(data):
            if self._kind >= 0:
                take = min(self._left, len(data) - pos)
                room = self._want - len(self._body)
                if room > 0:
                    self._body += data[pos : pos + min(take, room)]
                pos += take
                self._left -= take
                if self._left == 0:
                    self._finish(ts, out)
                continue
            self._buf += data[pos:]
            pos = len(data)
            try:
                self._frame_buffered(ts, out)
            except NotThisProtocol:
                self._lose()
        return out

    def skip(self, n: int, ts: int) -> list[Frame]:
        """`n` bytes went by uncaptured."""
        out: list[Frame] = []
        if n <= 0:
            return out
        self._position += n
        if self.lost:
            return out
        if self._kind >= 0 and not self._buf and n <= self._left:
            self._left -= n
            if self._left == 0:
                self._finish(ts, out)
            return out
        self._lose()
        self.lost_in_gap = True
        return out

    def skip_shed(self, n: int, ts: int) -> list[Frame]:
        """`n` bytes of whole messages went unsent (the kernel shed their exchanges
        at a message's start): framing holds."""
        if self._kind < 0 and not self._buf and not self.lost:
            self._position += n
            return []
        return self.skip(n, ts)

    def _frame_buffered(self, ts: int, out: list[Frame]) -> None:
        buf = self._buf
        while buf:
            header = self._header(buf)
            if header is None:
                return
            kind, head, length = header
            take = min(length, len(buf) - head)
            self._kind, self._length, self._left, self._start = kind, length, length - take, ts
            self._offset = self._position - len(buf)
            self._want = self._keep(kind, length)
            self._body = bytearray(buf[head : head + min(take, self._want)])
            del buf[: head + take]
            if self._left == 0:
                self._finish(ts, out)

    def _finish(self, ts: int, out: list[Frame]) -> None:
        out.append(
            Frame(self._kind, bytes(self._body), self._length, self._start, ts, self._offset)
        )
        self.synced = True
        self._kind = -1
        self._body = bytearray()

    def _lose(self) -> None:
        self._buf.clear()
        self._kind, self._left = -1, 0
        self._body = bytearray()
        self.lost, self.lost_in_gap = True, False


class FramedConnection(Generic[R]):
    """Both directions of a length-framed protocol: one `Framer` each way.

    Subclasses turn frames into records (`_handle`) and say what a loss of
    sync means for requests in flight (`_lost_sync`); feeding, skipping, the
    kernel's quiet offsets and the "is this even the protocol" check are here.
    """

    def __init__(self, requests: Framer, responses: Framer) -> None:
        self._framers = {True: requests, False: responses}
        self.parse_errors = 0
        # Tokens of requests given up on (more in flight than kept): the owner
        # ends them, or their threads would seem busy with them for minutes.
        self.abandoned: list[object] = []
        self.stopped = False  # encrypted or compressed from here on: nothing more to read

    def _handle(self, is_request: bool, frames: list[Frame]) -> list[R]:
        raise NotImplementedError

    def _lost_sync(self, is_request: bool, ts: int) -> list[R]:
        """Bytes of a header went by unseen in this direction."""
        return []

    def skippable(self, is_request: bool) -> int:
        return self._framers[is_request].skippable

    def not_protocol(self, is_request: bool) -> bool:
        framer = self._framers[is_request]
        return self.stopped or (framer.lost and not framer.synced)

    def feed(self, is_request: bool, data: bytes, ts: int) -> list[R]:
        return self._run(is_request, ts, lambda framer: framer.feed(data, ts))

    def skip(self, is_request: bool, n: int, ts: int) -> list[R]:
        return self._run(is_request, ts, lambda framer: framer.skip(n, ts))

    def skip_shed(self, is_request: bool, n: int, ts: int) -> list[R]:
        """Whole exchanges the span budget shed: no request in flight is lost."""
        return self._run(is_request, ts, lambda framer: framer.skip_shed(n, ts))

    def _run(self, is_request: bool, ts: int, step: Callable[[Framer], list[Frame]]) -> list[R]:
        if self.stopped:
            return []
        framer = self._framers[is_request]
        was_lost = framer.lost
        done = self._handle(is_request, step(framer))
        if framer.lost and not was_lost:
            # Bytes that are not this protocol are a parse error; a header among
            # bytes the kernel did not capture (a 1 MiB COPY in 8 KiB writes of
            # which it sends the first KiB) is not: framing is found again at a
            # later call's start, as HTTP/1 and RESP do uncounted.
            if not framer.lost_in_gap:
                self.parse_errors += 1
            done += self._lost_sync(is_request, ts)
        return done
