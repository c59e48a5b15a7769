"""Which protocol a connection speaks, from its first bytes and its server port.

Order of trust: an operator's port override, then the first bytes (a request
line, a RESP array, a PostgreSQL start-up message, a MySQL greeting, an
HTTP/2 preface), then the well-known port. `exclude` lists protocols already
tried and found wrong on this connection, so a bad guess falls through to the
next candidate instead of losing the connection.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from otel_ebpf.processors.protocols.http1 import looks_like_request
from otel_ebpf.processors.protocols.http2 import PREFACE, looks_like_server_settings
from otel_ebpf.processors.protocols.mysql import looks_like_server_greeting
from otel_ebpf.processors.protocols.postgres import looks_like_startup
from otel_ebpf.processors.protocols.resp import looks_like_resp_command

WELL_KNOWN_PORTS: Mapping[int, str] = {
    6379: "redis",
    5432: "postgresql",
    3306: "mysql",
    53: "dns",
}


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
        if PREFACE.startswith(request[:24]) and len(request) >= 3:
            by_bytes = "http2"
        elif looks_like_request(request):
            by_bytes = "http"
        elif looks_like_resp_command(request):
            by_bytes = "redis"
        elif looks_like_startup(request):
            by_bytes = "postgresql"
    elif response and looks_like_server_greeting(response):
        by_bytes = "mysql"  # the server speaks first
    elif response and looks_like_server_settings(response):
        by_bytes = "http2"  # HTTP/2 servers send SETTINGS before reading the preface
    if by_bytes and by_bytes not in exclude:
        return by_bytes
    by_port = WELL_KNOWN_PORTS.get(server_port)
    if by_port and by_port not in exclude:
        return by_port
    # HTTP/1 last: its parser tells quickly when the bytes are not HTTP either.
    return None if "http" in exclude else "http"
