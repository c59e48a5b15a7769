"""Records per second per core of each protocol parser, on recorded real streams.

Replays the fixtures in tests/captures (grpcio, curl/nghttpd, psql, psycopg,
the mariadb client, PyMySQL, mysql-connector) plus synthetic HTTP/1, RESP and
DNS traffic, one parser object per connection as in the collector, and
divides the records produced by the process CPU time spent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
import dns.message

from captured import load
from otel_ebpf.processors.protocols.dns import DnsQueries
from otel_ebpf.processors.protocols.http1 import Http1Connection
from otel_ebpf.processors.protocols.http2 import Http2Connection
from otel_ebpf.processors.protocols.mysql import MysqlConnection
from otel_ebpf.processors.protocols.postgres import PgConnection
from otel_ebpf.processors.protocols.resp import RespConnection

Chunks = list[tuple[bool, bytes]]


def replaying(make: Callable[[], Any], streams: list[Chunks]) -> Callable[[], int]:
    """One pass over the streams, a fresh parser per stream (one per connection)."""

    def run() -> int:
        n = 0
        for chunks in streams:
            conn = make()
            for ts, (is_request, data) in enumerate(chunks):
                n += len(conn.feed(is_request, data, ts))
            n += len(conn.close(len(chunks)))
        return n

    return run


def measure(name: str, run: Callable[[], int], seconds: float) -> None:
    records, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        records += run()
    spent = time.process_time() - start
    print(f"  {name:<30} {records / spent:>10,.0f} records/s per core")


def http1_stream() -> Chunks:
    req = b"GET /api/items/42 HTTP/1.1\r\nHost: svc\r\nUser-Agent: bench\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n"
    return [(True, req), (False, resp)] * 50


def resp_stream() -> Chunks:
    cmd = b"*3\r\n$3\r\nSET\r\n$7\r\nkey:001\r\n$5\r\nvalue\r\n"
    return [(True, cmd), (False, b"+OK\r\n")] * 50


def dns_replay() -> Callable[[], int]:
    messages = []
    for i in range(50):
        query = dns.message.make_query(f"svc{i}.example.", "A")
        messages.append((query.to_wire(), dns.message.make_response(query).to_wire()))

    def run() -> int:
        q = DnsQueries("udp")
        n = 0
        for query, answer in messages:
            q.message(query, 1, outgoing=True)
            n += len(q.message(answer, 2, outgoing=False))
        return n

    return run


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(f"parser throughput ({seconds:.0f} s CPU each)")
    cases = {
        "HTTP/1 (synthetic)": replaying(Http1Connection, [http1_stream()]),
        "RESP (synthetic)": replaying(RespConnection, [resp_stream()]),
        "PostgreSQL (psql, psycopg)": replaying(
            PgConnection, [load("pg_psql.bin"), load("pg_psycopg.bin")]
        ),
        "MySQL (3 clients)": replaying(
            MysqlConnection,
            [load("mysql_client.bin"), load("mysql_pymysql.bin"), load("mysql_prepared.bin")],
        ),
        "HTTP/2 + gRPC (grpcio, curl)": replaying(
            Http2Connection, [load("grpc.bin"), load("h2_curl.bin")]
        ),
        "DNS (dnspython decoding)": dns_replay(),
    }
    for name, run in cases.items():
        measure(name, run, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
