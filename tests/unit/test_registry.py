"""The protocol table: detection order, ports, overrides, role guessing."""

from __future__ import annotations

import struct

import pytest

from otel_ebpf.model import Role
from otel_ebpf.processors.protocols.http2 import PREFACE
from otel_ebpf.processors.protocols.registry import PROTOCOLS, detect, guess_role, new_parser

HTTP_GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
HTTP_OK = b"HTTP/1.1 200 OK\r\n\r\n"
RESP_GET = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
PG_STARTUP = struct.pack(">II", 17, 196608) + b"user\0u\0\0"
MYSQL_GREETING = bytes([60, 0, 0, 0, 10]) + b"8.0.36\0"
H2_SETTINGS = bytes([0, 0, 6, 4, 0, 0, 0, 0, 0]) + b"\0\3\0\0\0\x64"


@pytest.mark.parametrize(
    ("request_bytes", "response_bytes", "port", "expected"),
    [
        (PREFACE, b"", 8080, "http2"),
        (HTTP_GET, b"", 6379, "http"),  # bytes before ports
        (RESP_GET, b"", 8080, "redis"),
        (PG_STARTUP, b"", 9999, "postgresql"),
        (b"", MYSQL_GREETING, 9999, "mysql"),
        (b"", H2_SETTINGS, 9999, "http2"),
        (b"\x00\x01garbage", b"", 5432, "postgresql"),  # the port, when bytes say nothing
        (b"\x00\x01garbage", b"", 9999, "http"),  # HTTP/1 last: its parser tells fast
    ],
)
def test_detection_trusts_bytes_then_ports(
    request_bytes: bytes, response_bytes: bytes, port: int, expected: str
) -> None:
    assert detect(request_bytes, response_bytes, port) == expected


def test_an_override_wins_and_a_wrong_guess_falls_through() -> None:
    assert detect(HTTP_GET, b"", 7000, {7000: "redis"}) == "redis"
    assert detect(HTTP_GET, b"", 7000, {7000: "redis"}, exclude=("redis",)) == "http"
    assert detect(RESP_GET, b"", 6379, exclude=("redis",)) == "http"
    assert detect(b"?", b"", 9999, exclude=("http",)) is None


def test_every_protocol_has_a_parser() -> None:
    for spec in PROTOCOLS:
        assert new_parser(spec.name) is not None
    assert new_parser("smtp") is None


@pytest.mark.parametrize(
    ("payload", "sent", "local", "remote", "expected"),
    [
        (HTTP_GET, True, 40000, 8080, Role.CLIENT),
        (HTTP_GET, False, 8080, 40000, Role.SERVER),
        (HTTP_OK, True, 8080, 40000, Role.SERVER),
        (HTTP_OK, False, 40000, 8080, Role.CLIENT),
        (RESP_GET, True, 40000, 7777, Role.CLIENT),
        (PG_STARTUP, False, 7777, 40000, Role.SERVER),
        (b"\x17\x03\x03", True, 40000, 3306, Role.CLIENT),  # by the peer's port
        (b"\x17\x03\x03", True, 5432, 40000, Role.SERVER),  # by ours
        (b"\x17\x03\x03", True, 40000, 8443, None),  # nothing tells yet
    ],
)
def test_role_of_a_connection_that_predates_us(
    payload: bytes, sent: bool, local: int, remote: int, expected: Role | None
) -> None:
    assert guess_role(payload, sent, local, remote, {}) == expected


def test_an_operator_port_names_the_server_side() -> None:
    assert guess_role(b"\x17\x03", False, 9000, 40000, {9000: "redis"}) == Role.SERVER
