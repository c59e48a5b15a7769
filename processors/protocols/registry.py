"""The protocols we parse, in one table: how each is recognised, which port it
is known by, and its parser. Detection and role guessing both read it.

Detection's order of trust: an operator's port override, then the first bytes
(a request line, a RESP array, a PostgreSQL start-up message, a MySQL greeting,
an HTTP/2 preface), then the well-known port. `exclude` lists protocols already
tried and found wrong on this connection, so a bad guess falls through to the
next candidate instead of losing the connection.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from otel_ebpf.model import Role
from otel_ebpf.processors.connections import ProtocolParser
from otel_ebpf.processors.protocols.dns import DnsTcpConnection
from otel_ebpf.processors.protocols.http1 import (
    Http1Connection,
    looks_like_request,
    looks_like_response,
)
from otel_ebpf.processors.protocols.http2 import (
    PREFACE,
    Http2Connection,
    looks_like_server_settings,
)
from otel_ebpf.processors.protocols.mysql import MysqlConnection, looks_like_server_greeting
from otel_ebpf.processors.protocols.postgres import PgConnection, looks_like_startup
from otel_ebpf.processors.protocols.resp import RespConnection, looks_like_resp_command

Sniff = Callable[[bytes], bool]


def _h2_preface(data: bytes) -> bool:
    return len(data) >= 3 and PREFACE.startswith(data[:24])


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    new_parser: Callable[[], ProtocolParser]
    opens_request: Sniff | None = None  # a client's first bytes
    opens_server: Sniff | None = None  # what a server sends before any request
    opens_response: Sniff | None = None  # an answer's first bytes, anywhere in a stream
    port: int | None = None  # well known


PROTOCOLS: tuple[ProtocolSpec, ...] = (  # in detection order
    ProtocolSpec(
        "http2",
        Http2Connection,
        opens_request=_h2_preface,
        opens_server=looks_like_server_settings,  # sent before it reads the preface
    ),
    ProtocolSpec(
        "http",
        Http1Connection,
        opens_request=looks_like_request,
        opens_response=looks_like_response,
    ),
    ProtocolSpec(
        "redis",
        RespConnection,
        opens_request=looks_like_resp_command,
        port=6379,
    ),
    ProtocolSpec(
        "postgresql",
        PgConnection,
        opens_request=looks_like_startup,
        port=5432,
    ),
    ProtocolSpec(
        "mysql",
        MysqlConnection,
        opens_server=looks_like_server_greeting,  # the server speaks first
        port=3306,
    ),
    ProtocolSpec(
        "dns",
        DnsTcpConnection,
        port=53,
    ),
)
BY_NAME: Mapping[str, ProtocolSpec] = {p.name: p for p in PROTOCOLS}
WELL_KNOWN_PORTS: Mapping[int, str] = {p.port: p.name for p in PROTOCOLS if p.port}


def _says(sniff: Sniff | None, data: bytes) -> bool:
    return sniff is not None and sniff(data)


def detect(
    request: bytes,
    response: bytes,
    server_port: int,
    overrides: Mapping[int, str] | None = None,
    exclude: Collection[str] = (),
) -> str | None:
    """The protocol to parse with; None when nothing fits yet."""
    forced = (overrides or {}).get(server_port)
    if forced and forced not in exclude:
        return forced
    by_bytes = None
    if request:
        by_bytes = next(
            (p.name for p in PROTOCOLS if p.opens_request and p.opens_request(request)), None
        )
    elif response:
        by_bytes = next(
            (p.name for p in PROTOCOLS if p.opens_server and p.opens_server(response)), None
        )
    if by_bytes and by_bytes not in exclude:
        return by_bytes
    by_port = WELL_KNOWN_PORTS.get(server_port)
    if by_port and by_port not in exclude:
        return by_port
    # HTTP/1 last: its parser tells quickly when the bytes are not HTTP either.
    return None if "http" in exclude else "http"


def new_parser(name: str) -> ProtocolParser | None:
    spec = BY_NAME.get(name)
    return spec.new_parser() if spec else None


def guess_role(
    payload: bytes, sent: bool, local_port: int, remote_port: int, overrides: Mapping[int, str]
) -> Role | None:
    """This end's role on a connection that predates us, from bytes it `sent` (or
    received), else from which end has a known port; None: wait for more."""
    if any(_says(p.opens_request, payload) for p in PROTOCOLS):
        return Role.CLIENT if sent else Role.SERVER
    if any(_says(p.opens_response, payload) for p in PROTOCOLS):
        return Role.SERVER if sent else Role.CLIENT
    known = overrides.keys() | WELL_KNOWN_PORTS.keys()
    if remote_port in known:
        return Role.CLIENT
    if local_port in known:
        return Role.SERVER
    return None
