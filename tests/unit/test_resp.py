"""RESP2/RESP3 parsing and command/reply pairing, with fuzzing (pure logic)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from captured import load
from otel_ebpf.model import RedisExchange, RequestStarted
from otel_ebpf.processors.protocols.resp import RespConnection
from splitting import ended, feed_random, replay, resplit, split


def cmd(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def run(pairs: list[tuple[bool, bytes]]) -> list[RedisExchange]:
    conn = RespConnection()
    out: list[RedisExchange] = []
    for ts, (is_req, data) in enumerate(pairs, start=1):
        out += conn.feed(is_req, data, ts)
    return ended(out + conn.close(len(pairs) + 1))


def summary(xs: list[RedisExchange]) -> list[tuple[str, str | None, int | None]]:
    return [(x.name, x.error, x.reply.kind if x.reply else None) for x in xs]


def test_commands_pair_with_replies_in_order_even_pipelined() -> None:
    got = run(
        [
            (True, cmd(b"SET", b"k", b"v") + cmd(b"GET", b"k") + cmd(b"INCR", b"k")),
            (False, b"+OK\r\n$1\r\nv\r\n-ERR value is not an integer or out of range\r\n"),
        ]
    )
    assert summary(got) == [
        ("SET", None, ord("+")),
        ("GET", None, ord("$")),
        ("INCR", "ERR", ord("-")),
    ]
    assert got[1].reply is not None and got[1].reply.text == b"v"
    assert got[0].command.items[1].text == b"k"


def test_multi_exec_and_wrongtype() -> None:
    got = run(
        [
            (True, cmd(b"MULTI")),
            (False, b"+OK\r\n"),
            (True, cmd(b"LPUSH", b"l", b"a")),
            (False, b"+QUEUED\r\n"),
            (True, cmd(b"EXEC")),
            (False, b"*1\r\n:1\r\n"),
            (True, cmd(b"GET", b"l")),
            (False, b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
        ]
    )
    assert [x.name for x in got] == ["MULTI", "LPUSH", "EXEC", "GET"]
    assert got[2].reply is not None and got[2].reply.length == 1
    assert got[3].error == "WRONGTYPE"


def test_pubsub_messages_are_not_replies() -> None:
    got = run(
        [
            (True, cmd(b"SUBSCRIBE", b"news")),
            (False, b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"),
            (False, b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n" * 50),
            (True, cmd(b"PING")),
            (False, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"),
        ]
    )
    assert [x.name for x in got] == ["SUBSCRIBE", "PING"]


def test_resp3_types_and_pushes() -> None:
    got = run(
        [
            (True, cmd(b"HELLO", b"3")),
            (False, b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"),
            (True, cmd(b"CLIENT", b"TRACKING", b"on")),
            (False, b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"),  # out-of-band push first
            (False, b"+OK\r\n"),
            (True, cmd(b"X")),
            (False, b"_\r\n"),
            (True, cmd(b"Y")),
            (False, b"~2\r\n,1.5\r\n#t\r\n"),
            (True, cmd(b"Z")),
            (False, b"!21\r\nSYNTAX invalid syntax\r\n"),
        ]
    )
    assert summary(got) == [
        ("HELLO", None, ord("%")),
        ("CLIENT", None, ord("+")),
        ("X", None, ord("_")),
        ("Y", None, ord("~")),
        ("Z", "SYNTAX", ord("!")),
    ]


def test_big_value_skipped_by_length_and_next_command_parsed() -> None:
    conn = RespConnection()
    big = 1 << 20
    head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % big
    conn.feed(True, head + b"x" * 100, 1)
    assert conn.skippable(True) == big - 100
    conn.skip(True, big - 100 + 2, 2)  # the rest of the payload and its CRLF
    out = conn.feed(False, b"+OK\r\n", 3)
    out += conn.feed(True, cmd(b"GET", b"k"), 4) + conn.feed(False, b"$-1\r\n", 5)
    assert [x.name for x in ended(out)] == ["SET", "GET"]


def test_inline_commands_and_garbage() -> None:
    conn = RespConnection()
    assert conn.feed(True, b"\x16\x03\x01\x00\x00garbage", 1) == []
    assert conn.not_protocol(True)
    out = conn.feed(True, cmd(b"PING"), 2) + conn.feed(False, b"+PONG\r\n", 3)
    assert [x.name for x in ended(out)] == ["PING"]
    fresh = RespConnection()
    got = fresh.feed(True, b"PING\r\n", 1) + fresh.feed(False, b"+PONG\r\n", 2)
    assert [x.name for x in ended(got)] == ["PING"]


def test_an_inline_command_after_shed_ones_is_parsed() -> None:
    """The kernel shed whole commands and their replies: parsing holds, where a
    loss of sync would wait for a '*' the inline command never sends."""
    conn = RespConnection()
    out = conn.feed(True, cmd(b"GET", b"k"), 1) + conn.feed(False, b"$-1\r\n", 2)
    conn.skip_shed(True, len(cmd(b"ECHO", b"x")), 3)
    conn.skip_shed(False, len(b"$1\r\nx\r\n"), 4)
    out += conn.feed(True, b"PING\r\n", 5) + conn.feed(False, b"+PONG\r\n", 6)
    assert [x.name for x in ended(out)] == ["GET", "PING"]
    assert conn.parse_errors == 0


def test_unanswered_command_is_reported_at_close() -> None:
    assert summary(run([(True, cmd(b"BLPOP", b"q", b"0"))])) == [("BLPOP", None, None)]


def test_commands_dropped_past_the_bound_are_handed_back() -> None:
    """Past max_pending the oldest command is dropped: its RequestStarted comes back
    so its owner can end it (nothing dropped silently)."""
    c = RespConnection(max_pending=2)
    a, b, cc = c.feed(True, cmd(b"GET", b"a") + cmd(b"GET", b"b") + cmd(b"GET", b"c"), 1)
    assert all(isinstance(s, RequestStarted) for s in (a, b, cc)) and c.abandoned == [a]
    (x, y) = c.feed(False, b"$1\r\nb\r\n$1\r\nc\r\n", 2)
    assert (x.token, y.token) == (b, cc)


STREAM_REQ = (
    cmd(b"SET", b"a", b"x" * 100) + cmd(b"GET", b"a") + cmd(b"HELLO", b"3") + cmd(b"DEL", b"a")
)
STREAM_REP = b"+OK\r\n$100\r\n" + b"x" * 100 + b"\r\n%1\r\n+proto\r\n:3\r\n:1\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=30), st.lists(st.integers(0, 10_000), max_size=30))
def test_random_splits_give_the_same_exchanges(req_cuts: list[int], rep_cuts: list[int]) -> None:
    conn = RespConnection()
    out: list[RedisExchange] = []
    for piece in split(STREAM_REQ, req_cuts):
        out += conn.feed(True, piece, 1)
    for piece in split(STREAM_REP, rep_cuts):
        out += conn.feed(False, piece, 1)
    assert summary(ended(out)) == [
        ("SET", None, ord("+")),
        ("GET", None, ord("$")),
        ("HELLO", None, ord("%")),
        ("DEL", None, ord(":")),
    ]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120), st.integers(0, 3)), max_size=30))
def test_random_bytes_never_raise(chunks: list[tuple[bool, bytes, int]]) -> None:
    feed_random(RespConnection(), chunks, gap_unit=50)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"*", b"$", b"%", b">", b"\r\n", b"-1", b"3", b"*99999999\r\n", b"+OK", b"x"]
        ),
        max_size=40,
    )
)
def test_resp_like_fragments_never_raise(pieces: list[bytes]) -> None:
    conn = RespConnection()
    for piece in pieces:
        conn.feed(True, piece, 1)
        conn.feed(False, piece, 1)
    conn.close(2)


def test_recorded_redis_py_session() -> None:
    """redis-py against a real redis-server: pipeline, MULTI/EXEC, an error, a 5 kB value."""
    out = replay(RespConnection(), load("redis_py.bin"))
    assert [(x.name, x.error) for x in out][2:] == [
        *[("SET", None)] * 5,
        ("MULTI", None),
        ("INCRBY", None),
        ("LPUSH", None),
        ("EXEC", None),
        ("INCRBY", "WRONGTYPE"),
        ("SET", None),
        ("GET", None),
    ]
    # The 5 kB value arrives past the default capture size: skipped by length.
    assert records(replay(RespConnection(), load("redis_py.bin"), capture=1024)) == records(out)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 12_000), max_size=60))
def test_random_splits_of_a_recorded_session_give_the_same_exchanges(cuts: list[int]) -> None:
    chunks = load("redis_py.bin")
    assert records(replay(RespConnection(), resplit(chunks, cuts))) == records(
        replay(RespConnection(), chunks)
    )


def records(out: list[RedisExchange]) -> list[tuple[str, str | None, bool]]:
    return [(x.name, x.error, x.answered) for x in out]
