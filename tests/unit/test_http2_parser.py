"""HTTP/2 and gRPC parser on streams recorded from grpcio and from curl against nghttpd."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captured import load
from otel_ebpf.model import (
    ConnClose,
    ConnOpen,
    DataEvent,
    Declined,
    Direction,
    Endpoint,
    Http2Exchange,
    RequestStarted,
    Role,
)
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.protocols.http2 import (
    MAX_HPACK_TABLE,
    PREFACE,
    Http2Connection,
    looks_like_server_settings,
)
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.telemetry import SelfTelemetry
from splitting import feed_random, replay, resplit


def records(out: list[Http2Exchange]) -> list[tuple[object, ...]]:
    return [
        (x.stream_id, x.method, x.path, x.status, x.grpc_status, x.request_bytes, x.response_bytes)
        for x in out
    ]


def test_grpc_unary_streaming_and_failing_calls() -> None:
    chunks = load("grpc.bin")
    assert chunks[0][1].startswith(PREFACE)
    assert looks_like_server_settings(next(d for r, d in chunks if not r))
    conn = Http2Connection()
    out = replay(conn, chunks)
    assert [(x.path, x.grpc_status) for x in out] == [
        ("/demo.Greeter/SayHello", 0),
        ("/demo.Greeter/SayHello", 0),
        ("/demo.Greeter/SayHello", 0),
        ("/demo.Greeter/Count", 0),
        ("/demo.Greeter/Count", 0),
        ("/demo.Greeter/Fail", 5),
    ]
    assert out[-1].grpc_message == "no such greeting"
    assert all(x.grpc and x.method == "POST" and x.status == 200 and x.ended for x in out)
    assert out[3].response_bytes == 4 * (5 + 2)  # four length-prefixed messages streamed
    assert conn.parse_errors == 0 and not any(conn.untrusted.values())


def answers_first(chunks: list[tuple[bool, bytes]]) -> list[tuple[bool, bytes]]:
    """Each client call after the preface reported after the server's answer to it,
    as a client that reads on another thread can make the kernel report them."""
    out, request = chunks[:1], None
    for is_request, data in chunks[1:]:
        if is_request:
            if request is not None:
                out.append(request)
            request = (is_request, data)
        else:
            out.append((is_request, data))
    return out + ([request] if request else [])


def test_answers_reported_before_their_requests_give_the_same_records() -> None:
    chunks = load("grpc.bin")
    reordered = answers_first(chunks)
    assert reordered != chunks
    conn = Http2Connection()
    assert records(replay(conn, reordered)) == records(replay(Http2Connection(), chunks))
    assert conn.parse_errors == 0


def test_an_answer_whose_request_never_comes_is_not_reported() -> None:
    chunks = [c for c in load("grpc.bin") if not c[0] or c[1].startswith(PREFACE)]
    assert replay(Http2Connection(), chunks) == []


def test_curl_against_nghttpd() -> None:
    (x,) = replay(Http2Connection(), load("h2_curl.bin"))
    assert (x.method, x.path, x.status) == ("GET", "/missing", 404)
    assert x.authority.startswith("127.0.0.1:")
    assert x.headers["user-agent"].startswith("curl/") and not x.grpc


def test_a_request_start_carries_its_traceparent_and_is_its_exchanges_token() -> None:
    conn = Http2Connection()
    block = hpack.Encoder().encode(
        [
            (":method", "GET"),
            (":path", "/x"),
            (":scheme", "http"),
            (":authority", "a"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ]
    )
    frame = len(block).to_bytes(3, "big") + bytes([1, 0x4 | 0x1]) + (1).to_bytes(4, "big")
    (started,) = conn.feed(True, PREFACE + frame + block, 10)
    assert isinstance(started, RequestStarted)
    head = started.head
    assert head.headers["traceparent"].startswith("00-0af7") and head.start_ts == 10
    assert head.stream_offset == len(PREFACE)
    (x,) = conn.close(20)
    assert x.token is started and not x.answered


def test_header_block_cut_by_the_capture_untrusts_that_direction() -> None:
    chunks = load("grpc.bin")
    conn = Http2Connection()
    out = replay(conn, chunks, capture=40)  # every call cut to 40 bytes
    assert conn.untrusted[True] and conn.parse_errors >= 1
    assert len(out) < 6  # streams after the cut are counted, not guessed


@pytest.mark.parametrize("pad", [6, 7, 255])
def test_padding_as_long_as_the_headers_payload_untrusts_that_direction(pad: int) -> None:
    """RFC 9113 6.2: a connection error. As Python the slice read from the
    wrong end of the payload; compiled, it raised SystemError."""
    conn = Http2Connection()
    conn.feed(True, PREFACE, 0)
    payload = bytes([pad]) + b"\x82\x84\x87\x41\x00"  # 6 bytes, the pad length first
    headers = len(payload).to_bytes(3, "big") + b"\x01\x0c" + (1).to_bytes(4, "big")
    assert conn.feed(True, headers + payload, 1) == []  # PADDED | END_HEADERS
    assert conn.untrusted[True] and conn.parse_errors == 1


def test_joined_mid_connection_is_declined() -> None:
    conn = Http2Connection()
    later = [d for r, d in load("grpc.bin") if r][2]  # a client call after the preface
    assert conn.feed(True, later, 1) == []
    assert conn.not_protocol(True)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 2000), max_size=60))
def test_random_splits_give_the_same_records(cuts: list[int]) -> None:
    for name in ("grpc.bin", "h2_curl.bin"):
        chunks = load(name)
        assert records(replay(Http2Connection(), resplit(chunks, cuts))) == records(
            replay(Http2Connection(), chunks)
        )


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120), st.integers(0, 3)), max_size=30))
def test_random_bytes_never_raise(chunks: list[tuple[bool, bytes, int]]) -> None:
    feed_random(Http2Connection(), chunks, gap_unit=40)


@given(st.lists(st.sampled_from(load("grpc.bin")), max_size=20), st.integers(0, 3))
def test_reordered_real_frames_never_raise(chunks: list[tuple[bool, bytes]], gap: int) -> None:
    conn = Http2Connection()
    conn.feed(True, PREFACE, 0)
    feed_random(conn, [(r, d, gap) for r, d in chunks], gap_unit=7)


def settings_frame(table_size: int) -> bytes:
    body = (1).to_bytes(2, "big") + table_size.to_bytes(4, "big")  # SETTINGS_HEADER_TABLE_SIZE
    return len(body).to_bytes(3, "big") + b"\x04\x00" + b"\0\0\0\0" + body


def test_an_hpack_table_beyond_the_bound_declines_the_connection() -> None:
    conn = Http2Connection()
    conn.feed(True, PREFACE + settings_frame(MAX_HPACK_TABLE), 1)  # the bound itself is fine
    with pytest.raises(Declined):
        conn.feed(False, settings_frame(2**32 - 1), 2)


def test_the_tracker_silences_a_declined_connection_and_frees_its_decoder(
    tmp_path: Path,
) -> None:
    telemetry = SelfTelemetry()
    quiet: list[int] = []
    tracker = ConnectionTracker(
        lambda x, c: None,
        ProcessRegistry(proc=str(tmp_path)),
        Selector(),
        telemetry,
        set_quiet=lambda sk, gen, d, until: quiet.append(sk),
    )
    client, server = Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 8080)
    for sk, table in ((7, 4096), (8, 1 << 20)):
        tracker.handle(ConnOpen(sk, 1, Role.CLIENT, 99, client, server, False))
        first = PREFACE + settings_frame(4096)
        tracker.handle(
            DataEvent(
                sk, 1, Direction.EGRESS, Role.CLIENT, 99, 99, 3, 2, 0, len(first), 0, first, b"c"
            )
        )
        answer = settings_frame(table)
        tracker.handle(
            DataEvent(
                sk, 1, Direction.INGRESS, Role.CLIENT, 99, 99, 3, 3, 0, len(answer), 0, answer, b"c"
            )
        )
    assert telemetry.connections_declined == 1 and telemetry.parse_errors == 0
    assert set(quiet) == {8}
    # Counted references, not a weak one: the parser may be a compiled class
    # (mypyc's, which take no weak references).
    parser = tracker._conns[7].proto
    assert parser is not None and sys.getrefcount(parser) > 2  # the tracker's, ours, the call's
    tracker.handle(ConnClose(7, 4, 0, 0, Role.CLIENT, 99, client, server, 0, 0, 0, 0, 0, False))
    gc.collect()
    assert (
        sys.getrefcount(parser) == 2
    )  # ours and the call's: a closed connection keeps no HPACK tables
