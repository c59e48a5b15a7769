"""DNS pairing, timeouts and TCP framing, on messages dnspython encodes."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from otel_ebpf.model import RequestStarted
from otel_ebpf.processors.protocols.dns import DnsQueries, DnsTcpConnection, parse
from splitting import feed_random, split


def exchange(
    name: str, qtype: str, msg_id: int, *answers: str, rcode: int = 0
) -> tuple[bytes, bytes]:
    query = dns.message.make_query(name, qtype, id=msg_id)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if answers:
        response.answer.append(dns.rrset.from_text(name, 60, "IN", qtype, *answers))
    return query.to_wire(), response.to_wire()


def test_parallel_a_and_aaaa_pair_by_question() -> None:
    q4, r4 = exchange("svc.example.", "A", 7, "10.0.0.1", "10.0.0.2")
    q6, r6 = exchange("svc.example.", "AAAA", 7, "fd00::1")
    queries = DnsQueries("udp")
    (started4,) = queries.message(q4, 1, outgoing=True)  # queries start requests
    (started6,) = queries.message(q6, 2, outgoing=True)
    assert isinstance(started6, RequestStarted) and started6.head.start_ts == 2
    (six,) = queries.message(r6, 5, outgoing=False)
    (four,) = queries.message(r4, 6, outgoing=False)
    assert (six.token, four.token) == (started6, started4)
    assert (six.query.qtype, six.response and six.response.answers, six.start_ts) == (
        "AAAA",
        ("fd00::1",),
        2,
    )
    assert four.response and sorted(four.response.answers) == ["10.0.0.1", "10.0.0.2"]
    assert len(queries) == 0


def test_rcodes_and_answers_to_nothing() -> None:
    q, r = exchange("nope.example.", "A", 9, rcode=dns.rcode.NXDOMAIN)
    queries = DnsQueries("udp")
    assert queries.message(r, 1, outgoing=False) == []  # no query seen: ignored
    queries.message(q, 2, outgoing=True)
    (x,) = queries.message(r, 3, outgoing=False)
    assert x.response and x.response.rcode == "NXDOMAIN"


def test_unanswered_queries_time_out() -> None:
    q, _ = exchange("slow.example.", "A", 1)
    queries = DnsQueries("udp")
    queries.message(q, 1_000, outgoing=True)
    assert queries.expire(1_000 + 4_999, timeout_ns=5_000) == []
    (x,) = queries.expire(1_000 + 5_000, timeout_ns=5_000)
    assert x.timed_out and not x.answered and x.end_ts == 6_000


def test_cut_message_keeps_its_question() -> None:
    _, r = exchange("big.example.", "A", 3, *[f"10.0.0.{i}" for i in range(1, 60)])
    m = parse(r[:60])
    assert m is not None and (m.id, m.name, m.rcode, m.is_response) == (
        3,
        "big.example",
        "NOERROR",
        True,
    )
    assert parse(b"\x00" * 5) is None


def test_dns_over_tcp_any_split() -> None:
    q, r = exchange("tcp.example.", "A", 11, "10.9.9.9")
    framed_q = len(q).to_bytes(2, "big") + q
    framed_r = len(r).to_bytes(2, "big") + r
    for cut in range(len(framed_r) + 1):
        conn = DnsTcpConnection()
        conn.feed(True, framed_q, 1)
        out = [x for piece in split(framed_r, [cut]) for x in conn.feed(False, piece, 2)]
        assert [x.response and x.response.answers for x in out] == [("10.9.9.9",)]
        assert out[0].transport == "tcp"


@given(st.binary(max_size=600))
def test_random_datagrams_never_raise(data: bytes) -> None:
    queries = DnsQueries("udp")
    queries.message(data, 1, outgoing=True)
    queries.message(data, 2, outgoing=False)
    queries.expire(10**12, 1)


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120), st.integers(0, 3)), max_size=30))
def test_random_tcp_bytes_never_raise(chunks: list[tuple[bool, bytes, int]]) -> None:
    feed_random(DnsTcpConnection(), chunks, gap_unit=40)
