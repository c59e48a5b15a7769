"""DNS over UDP and TCP, sans-I/O: queries paired with answers, or timed out.

Messages are decoded with dnspython (header, question, answers); a message
cut short by the capture size still gives its id, rcode and question.
`DnsQueries` pairs per socket by message id and question, so a resolver's
parallel A and AAAA queries on one socket (sendmmsg) stay apart; `expire`
reports queries that got no answer within the timeout — a silent server is
visible, not absent. `DnsTcpConnection` frames DNS over TCP (2-byte length)
and feeds the same pairing.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Final, NamedTuple

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from otel_ebpf.model import DnsExchange, DnsMessage, RequestHead, RequestStarted
from otel_ebpf.processors.protocols.framing import Frame, FramedConnection, Framer

MAX_PENDING: Final = 4096
MAX_ANSWERS: Final = 16
_ADDRESS_TYPES: Final = (dns.rdatatype.A, dns.rdatatype.AAAA)


def parse(data: bytes) -> DnsMessage | None:
    """One DNS message; None when not even its header and question are readable."""
    if len(data) < 12:
        return None
    msg_id, flags = struct.unpack_from(">HH", data)
    try:
        message = dns.message.from_wire(data, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        try:  # cut short by the capture size: the question is at the front
            message = dns.message.from_wire(data, question_only=True, ignore_trailing=True)
        except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
            return None
    name, qtype = "", ""
    if message.question:
        q = message.question[0]
        name = q.name.to_text(omit_final_dot=True)
        qtype = dns.rdatatype.to_text(q.rdtype)
    records = [(rrset.rdtype, rdata.to_text()) for rrset in message.answer for rdata in rrset]
    addresses = [text for kind, text in records if kind in _ADDRESS_TYPES]
    answers = (addresses or [text for _, text in records])[:MAX_ANSWERS]
    return DnsMessage(
        msg_id,
        bool(flags & 0x8000),
        dns.rcode.to_text(dns.rcode.Rcode(flags & 0xF)),
        name,
        qtype,
        tuple(answers),
    )


class _Pending(NamedTuple):
    query: DnsMessage
    start_ts: int
    token: RequestStarted


DnsOutput = DnsExchange | RequestStarted


class DnsQueries:
    """Open queries of one socket (or TCP connection), paired by id and question."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self._pending: OrderedDict[tuple[int, str, str], _Pending] = OrderedDict()
        self.parse_errors = 0
        self.abandoned: list[object] = []  # tokens of queries dropped past MAX_PENDING

    def __len__(self) -> int:
        return len(self._pending)

    def message(self, data: bytes, ts: int, outgoing: bool) -> list[DnsOutput]:
        """A query we sent (`outgoing`: its RequestStarted) or an answer we got."""
        m = parse(data)
        if m is None:
            self.parse_errors += 1
            return []
        key = (m.id, m.name, m.qtype)
        if outgoing and not m.is_response:
            if len(self._pending) >= MAX_PENDING:
                self.abandoned.append(self._pending.popitem(last=False)[1].token)
            started = RequestStarted(RequestHead(ts, 0, {}))
            self._pending[key] = _Pending(m, ts, started)
            return [started]
        if not outgoing and m.is_response:
            p = self._pending.pop(key, None)
            if p is not None:
                return [DnsExchange(p.query, m, p.start_ts, ts, self.transport, False, p.token)]
        return []

    def expire(self, now: int, timeout_ns: int) -> list[DnsExchange]:
        """Queries older than the timeout: reported as timed out."""
        done = []
        while self._pending:
            key, p = next(iter(self._pending.items()))
            if now - p.start_ts < timeout_ns:
                break
            del self._pending[key]
            done.append(DnsExchange(p.query, None, p.start_ts, now, self.transport, True, p.token))
        return done

    def close(self, ts: int) -> list[DnsExchange]:
        done = [
            DnsExchange(p.query, None, p.start_ts, ts, self.transport, False, p.token)
            for p in self._pending.values()
        ]
        self._pending.clear()
        return done


class _TcpFramer(Framer):
    """DNS over TCP: a 2-byte length before each message."""

    def _header(self, buf: bytearray) -> tuple[int, int, int] | None:
        if len(buf) < 2:
            return None
        return 0, 2, buf[0] << 8 | buf[1]

    def _keep(self, kind: int, length: int) -> int:
        return min(length, 4096)


class DnsTcpConnection(FramedConnection[DnsOutput]):
    """Both directions of one DNS-over-TCP connection."""

    def __init__(self) -> None:
        super().__init__(_TcpFramer(), _TcpFramer())
        self.queries = DnsQueries("tcp")
        self.abandoned = self.queries.abandoned

    def _handle(self, is_request: bool, frames: list[Frame]) -> list[DnsOutput]:
        out: list[DnsOutput] = []
        for f in frames:
            ts = f.start_ts if is_request else f.end_ts
            out += self.queries.message(f.body, ts, outgoing=is_request)
        self.parse_errors += self.queries.parse_errors
        self.queries.parse_errors = 0
        return out

    def close(self, ts: int) -> list[DnsExchange]:
        return self.queries.close(ts)
