"""HTTP/1 parser: framing rules, pairing, resync, and fuzzing (pure logic, no kernel)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from captured import load
from otel_ebpf.model import HttpExchange, HttpHead, ParseError
from otel_ebpf.processors.protocols import http1
from otel_ebpf.processors.protocols.http1 import Http1Connection, Http1StreamParser
from splitting import ended, feed_random, replay, resplit, split

REQ = True
RESP = False


def run(pairs: list[tuple[bool, bytes]], close: bool = True) -> list[HttpExchange]:
    conn = Http1Connection()
    out: list[HttpExchange] = []
    for ts, (is_req, data) in enumerate(pairs, start=1):
        out += conn.feed(is_req, data, ts)
    if close:
        out += conn.close(len(pairs) + 1)
    return ended(out)


def summary(out: list[HttpExchange]) -> list[tuple[str, str, int | None, int, int]]:
    """What each exchange among a parser's output says (its RequestStarted records left out)."""
    return [
        (
            x.request.method,
            x.request.target,
            x.response.status if x.response else None,
            x.request_body_bytes,
            x.response_body_bytes,
        )
        for x in ended(out)
    ]


def test_keep_alive_content_length() -> None:
    got = run(
        [
            (REQ, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            (REQ, b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            (RESP, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        ]
    )
    assert summary(got) == [("GET", "/a", 200, 0, 5), ("POST", "/b", 404, 3, 0)]
    assert got[0].request.headers["host"] == "x"
    assert got[0].start_ts == 1 and got[0].end_ts == 2


def test_pipelining_pairs_in_order() -> None:
    got = run(
        [
            (REQ, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nHEAD /3 HTTP/1.1\r\n\r\n"),
            (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"),
            (RESP, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nBBHTTP/1.1 200 OK\r\n"),
            (RESP, b"Content-Length: 99\r\n\r\n"),  # HEAD: no body despite the length
        ]
    )
    assert summary(got) == [
        ("GET", "/1", 200, 0, 1),
        ("GET", "/2", 201, 0, 2),
        ("HEAD", "/3", 200, 0, 0),
    ]


def test_chunked_both_ways_with_trailers() -> None:
    got = run(
        [
            (REQ, b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n"),
            (REQ, b"5;ext=1\r\npedia\r\n0\r\n\r\n"),
            (
                RESP,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
            ),
        ]
    )
    assert summary(got) == [("POST", "/up", 200, 9, 3)]


def test_no_body_statuses_and_100_continue() -> None:
    got = run(
        [
            (REQ, b"PUT /f HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"),
            (RESP, b"HTTP/1.1 100 Continue\r\n\r\n"),
            (REQ, b"data"),
            (RESP, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (REQ, b"GET /c HTTP/1.1\r\n\r\n"),
            (RESP, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        ]
    )
    assert summary(got) == [("PUT", "/f", 204, 4, 0), ("GET", "/c", 304, 0, 0)]
    assert got[0].request.headers["expect"] == "100-continue"


def test_body_until_close() -> None:
    got = run(
        [
            (REQ, b"GET / HTTP/1.0\r\n\r\n"),
            (RESP, b"HTTP/1.0 200 OK\r\n\r\nsome"),
            (RESP, b"more"),
        ]
    )
    assert summary(got) == [("GET", "/", 200, 0, 8)]
    assert got[0].end_ts == 3  # the last byte, not the close


def test_request_without_response_is_reported_at_close() -> None:
    got = run([(REQ, b"GET /hang HTTP/1.1\r\n\r\n")])
    assert summary(got) == [("GET", "/hang", None, 0, 0)]


def test_an_answer_reported_before_its_request_is_paired_with_it() -> None:
    """A client reading on another thread: the kernel reported the answer first
    (stamped when read) and the request after (stamped when its send began)."""
    conn = Http1Connection()
    out = conn.feed(REQ, b"GET /a HTTP/1.1\r\n\r\n", 1)
    out += conn.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA", 2)
    out += conn.feed(RESP, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nBB", 5)
    assert summary(out) == [("GET", "/a", 200, 0, 1)]
    out += conn.feed(REQ, b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 4)
    assert len(ended(out)) == 1  # waits for the request's body
    out += conn.feed(REQ, b"abc", 4)
    out += conn.feed(REQ, b"GET /c HTTP/1.1\r\n\r\n", 6)
    out += conn.feed(RESP, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 7)
    assert summary(out) == [
        ("GET", "/a", 200, 0, 1),
        ("POST", "/b", 201, 3, 2),
        ("GET", "/c", 404, 0, 0),
    ]
    assert (ended(out)[1].start_ts, ended(out)[1].end_ts) == (4, 5)
    assert conn.close(8) == []


def test_an_answer_whose_request_was_never_seen_is_not_given_to_a_later_one() -> None:
    conn = Http1Connection()
    out = conn.feed(RESP, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", 2)
    out += conn.feed(REQ, b"GET /next HTTP/1.1\r\n\r\n", 3)
    out += conn.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert summary(out) == [("GET", "/next", 200, 0, 0)]


def test_mid_stream_join_skips_to_next_message() -> None:
    conn = Http1Connection()
    out = conn.feed(REQ, b"ody of a request we joined late", 1)
    out += conn.feed(RESP, b"ength: 3\r\n\r\nabc", 2)
    out += conn.feed(REQ, b"GET /next HTTP/1.1\r\n\r\n", 3)
    out += conn.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert summary(out) == [("GET", "/next", 200, 0, 0)]


def test_garbage_never_becomes_a_span_and_next_request_parses() -> None:
    conn = Http1Connection()
    out = conn.feed(REQ, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1)
    assert conn.not_protocol(REQ)  # before any message: "not HTTP/1", not an error
    out += conn.feed(REQ, b"GET\x00/ HTTP/1.1\r\n\r\n", 2)
    out += conn.feed(REQ, b"GET /ok HTTP/1.1\r\n\r\n", 3)
    out += conn.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert summary(out) == [("GET", "/ok", 200, 0, 0)]
    assert conn.parse_errors == 0 and not conn.not_protocol(REQ)
    conn.feed(REQ, b"\x00\x01 garbage after a good request", 5)
    assert conn.parse_errors == 1


def test_gap_inside_body_is_absorbed_and_reported_skippable() -> None:
    conn = Http1Connection()
    conn.feed(REQ, b"POST /big HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100, 1)
    assert conn.skippable(REQ) == 1000000 - 100
    conn.skip(REQ, 1000000 - 100, 2)
    out = conn.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    assert summary(out) == [("POST", "/big", 200, 1000000, 0)]


def test_truncated_head_keeps_complete_lines_and_recovers() -> None:
    conn2 = Http1Connection()
    conn2.feed(REQ, b"GET /t HTTP/1.1\r\nHost: h\r\nX-Long: aaaa", 1)
    conn2.skip(REQ, 5000, 1)
    got = conn2.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 2)
    assert summary(got) == [("GET", "/t", 200, 0, 2)]
    assert got[0].request.truncated and got[0].request.headers == {"host": "h"}


def test_secrets_are_not_kept() -> None:
    got = run(
        [
            (REQ, b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nCookie: a=b\r\n\r\n"),
            (RESP, b"HTTP/1.1 200 OK\r\nSet-Cookie: x=y\r\nContent-Length: 0\r\n\r\n"),
        ]
    )
    assert "authorization" not in got[0].request.headers
    assert "cookie" not in got[0].request.headers
    assert got[0].response is not None and "set-cookie" not in got[0].response.headers


def test_trace_context_headers_are_kept() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    got = run(
        [
            (
                REQ,
                f"GET / HTTP/1.1\r\ntraceparent: {tp}\r\ntracestate: a=1\r\nb3: 1-2-1\r\n\r\n".encode(),
            ),
            (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]
    )
    assert got[0].request.headers["traceparent"] == tp
    assert got[0].request.headers["tracestate"] == "a=1"
    assert got[0].request.headers["b3"] == "1-2-1"


def test_upgrade_stops_parsing() -> None:
    got = run(
        [
            (REQ, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            (RESP, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            (REQ, b"GET /not-http HTTP/1.1\r\n\r\n"),
            (RESP, b"\x81\x05hello"),
        ]
    )
    assert summary(got) == [("GET", "/ws", 101, 0, 0)]


def test_invalid_content_length_is_a_parse_error() -> None:
    p = Http1StreamParser(is_request=True)
    events = p.feed(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 1)
    assert [type(e).__name__ for e in events] == ["ParseError"]


# --- fuzzing ---------------------------------------------------------------

STREAM_REQ = (
    b"GET /a?q=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /b HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"
    b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
    b"HEAD /d HTTP/1.1\r\n\r\n"
)
STREAM_RESP = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nabcde\r\n0\r\nT: v\r\n\r\n"
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"
    b"HTTP/1.1 200 OK\r\nContent-Length: 123\r\n\r\n"
)


def feed_split(req_cuts: list[int], resp_cuts: list[int]) -> list[HttpExchange]:
    conn = Http1Connection()
    out: list[HttpExchange] = []
    for piece in split(STREAM_REQ, req_cuts):
        out += conn.feed(REQ, piece, 1)
    for piece in split(STREAM_RESP, resp_cuts):
        out += conn.feed(RESP, piece, 1)
    return ended(out + conn.close(1))


EXPECTED = [
    ("GET", "/a?q=1", 200, 0, 2),
    ("POST", "/b", 201, 11, 5),
    ("PUT", "/c", 500, 19, 4),
    ("HEAD", "/d", 200, 0, 0),
]


def test_unsplit_reference() -> None:
    assert summary(feed_split([], [])) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=40), st.lists(st.integers(0, 10_000), max_size=40))
def test_random_splits_give_the_same_records(req_cuts: list[int], resp_cuts: list[int]) -> None:
    assert summary(feed_split(req_cuts, resp_cuts)) == EXPECTED


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200), st.integers(0, 3)), max_size=30))
def test_random_bytes_never_raise(chunks: list[tuple[bool, bytes, int]]) -> None:
    feed_random(Http1Connection(), chunks, gap_unit=100)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([STREAM_REQ[:40], b"HTTP/1.1 ", b"GET ", b"\r\n", b"0\r\n", b"x" * 7]),
        max_size=30,
    ),
    st.booleans(),
)
def test_http_like_fragments_never_raise(pieces: list[bytes], is_req: bool) -> None:
    conn = Http1Connection()
    for piece in pieces:
        conn.feed(is_req, piece, 1)
        conn.feed(not is_req, piece, 1)
    conn.close(2)


def _recorded(out: list[HttpExchange]) -> list[tuple[object, ...]]:
    return [
        (
            x.request.target,
            x.request.headers.get("traceparent"),
            x.response and x.response.status,
            x.response_body_bytes,
        )
        for x in out
    ]


def test_recorded_curl_keep_alive_against_nginx() -> None:
    out = replay(Http1Connection(), load("http1_curl.bin"))
    assert [(t, s) for t, _, s, _ in _recorded(out)] == [
        ("/index.html", 200),
        ("/missing", 404),
        ("/index.html?q=1", 200),
    ]
    assert all(tp and tp.startswith("00-0af7") for _, tp, _, _ in _recorded(out))


@settings(max_examples=200)
@given(st.lists(st.integers(0, 2000), max_size=60))
def test_random_splits_of_a_recorded_session_give_the_same_exchanges(cuts: list[int]) -> None:
    chunks = load("http1_curl.bin")
    assert _recorded(replay(Http1Connection(), resplit(chunks, cuts))) == _recorded(
        replay(Http1Connection(), chunks)
    )


def _heads(data: bytes, pieces: int, ts: int = 7) -> list[HttpHead | ParseError]:
    """The heads (and errors) a fresh request parser makes of `data` fed in `pieces` calls."""
    parser = Http1StreamParser(True)
    step = -(-len(data) // pieces)
    out = [e for i in range(0, len(data), step) for e in parser.feed(data[i : i + step], ts)]
    return [e for e in out if isinstance(e, HttpHead | ParseError)]


def test_a_head_parsed_once_is_the_same_head_again_whole_or_split() -> None:
    """Heads seen lately are parsed once (a node sees each twice); each record
    still has its own time and offset, and split heads parse as whole ones."""
    head = b"GET /a?b=1 HTTP/1.1\r\nHost: x:81\r\nContent-Length: 2\r\n\r\nok"
    first, later, split_in_three = _heads(head, 1), _heads(head, 1, ts=9), _heads(head, 3)
    assert [h.replace(start_ts=7) for h in later] == first
    assert isinstance(later[0], HttpHead) and later[0].start_ts == 9
    assert isinstance(first[0], HttpHead) and first[0].headers == {
        "host": "x:81",
        "content-length": "2",
    }
    assert split_in_three == first
    assert _heads(b"GETX / HTTP/1.1\r\n\r\n", 1) == [ParseError("not an HTTP/1 request")]


def test_parsed_heads_kept_are_bounded_and_hold_no_header_bytes() -> None:
    parsed = http1._PARSED_REQUESTS
    for i in range(http1._PARSED_MAX + 50):
        _heads(b"GET /%d HTTP/1.1\r\n\r\n" % i, 1)
    assert len(parsed) == http1._PARSED_MAX
    oldest = next(iter(parsed))
    _heads(b"GET / HTTP/1.1\r\nUser-Agent: " + b"a" * 2000 + b"\r\n\r\n", 1)
    assert next(iter(parsed)) == oldest  # too large to keep: nothing moved
    _heads(b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n", 1)
    assert all(type(key) is int for key in parsed)  # a hash: no header bytes kept


def test_a_head_kept_as_a_request_is_parsed_afresh_as_a_response() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 0"
    assert isinstance(http1._head_fields(head, True), ParseError)
    fields = http1._head_fields(head, False)
    assert not isinstance(fields, ParseError) and fields.status == 200
