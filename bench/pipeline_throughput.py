"""What the collector's user space costs per request, the kernel left out.

Replays the records the kernel writes for keep-alive HTTP/1.1 requests seen from
both sides (wrk's CLIENT span and nginx's SERVER span per request) through the
collector's own wiring, `Collector` as `otel-ebpf` builds it, minus the probes:
decode, tracker, parser, correlator, span builder, metrics, the export
queue and its OTLP/gRPC exporter to a discarding sink in another process. The
kernel counted each request's RED, as it does plain HTTP/1's in production;
`--red-in-user-space` measures RED from each span instead, as for protocols the
kernel does not count.
Prints CPU microseconds per request: the processing thread's, and the whole
process's (export and metric threads included). `--profile` adds where the
processing thread's time goes. No root needed. `OTEL_EBPF_NATIVE=0` measures
the event path as Python where setup compiled it.

    .venv/bin/python bench/pipeline_throughput.py [--requests N] [--profile [--profile-out F]]
        [--red-in-user-space] [--new-connections traced|shed]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
from common import null_sink
from records import close_record, data_record, open_record

from otel_ebpf import native
from otel_ebpf.config import load
from otel_ebpf.memory import settle_heap
from otel_ebpf.model import Role
from otel_ebpf.pipeline import Collector
from otel_ebpf.receivers.sockets import decode

REQUEST = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 15\r\nConnection: keep-alive\r\n\r\n<h1>hello</h1>\n"
)
CONNECTIONS = 4  # as the nginx bench's wrk


def sockets(i: int) -> tuple[int, int]:
    """Connection i's client and server socket, aligned as the kernel's are (an
    odd one is a TLS connection's plaintext stream, read through OpenSSL)."""
    return 0x10000 + 16 * i, 0x10008 + 16 * i


def records(n: int, counted: bool) -> list[bytes]:
    """`n` requests over CONNECTIONS keep-alive connections, each seen from the
    client and the server, 10 us apart; `counted`: the kernel counted each
    request's RED, as it does plain HTTP/1's."""
    out = []
    for c in range(CONNECTIONS):
        port = 50000 + c
        client, server = sockets(c)
        out.append(open_record(client, Role.CLIENT, port, 8080))
        out.append(open_record(server, Role.SERVER, 8080, port))
    sent = [0] * CONNECTIONS
    answered = [0] * CONNECTIONS
    for i in range(n):
        c = i % CONNECTIONS
        (client, server), ts = sockets(c), 1_000_000 + i * 10_000
        q, r = sent[c], answered[c]
        out.append(data_record(client, Role.CLIENT, True, ts, q, REQUEST, red_counted=counted))
        out.append(
            data_record(server, Role.SERVER, False, ts + 1000, q, REQUEST, red_counted=counted)
        )
        out.append(data_record(server, Role.SERVER, True, ts + 2000, r, RESPONSE))
        out.append(data_record(client, Role.CLIENT, False, ts + 3000, r, RESPONSE))
        sent[c], answered[c] = q + len(REQUEST), r + len(RESPONSE)
    return out


def new_connection_records(n: int, shed: bool, counted: bool) -> list[bytes]:
    """`n` requests each on a connection of its own (ab without keep-alive), both
    ends: open, the request and its answer (unless the kernel `shed` them: then
    the opens and closes are all user space sees), close."""
    out = []
    for i in range(n):
        (client, server), ts = sockets(i), 1_000_000 + i * 50_000
        port = 10_000 + i % 50_000
        out.append(open_record(client, Role.CLIENT, port, 8080, ts))
        out.append(open_record(server, Role.SERVER, 8080, port, ts))
        if not shed:
            out.append(
                data_record(client, Role.CLIENT, True, ts + 1000, 0, REQUEST, red_counted=counted)
            )
            out.append(
                data_record(server, Role.SERVER, False, ts + 2000, 0, REQUEST, red_counted=counted)
            )
            out.append(data_record(server, Role.SERVER, True, ts + 3000, 0, RESPONSE))
            out.append(data_record(client, Role.CLIENT, False, ts + 4000, 0, RESPONSE))
        end = ts + 5000
        out.append(
            close_record(
                server, end, Role.SERVER, (8080, port), len(RESPONSE), len(REQUEST), ts, 40
            )
        )
        out.append(
            close_record(
                client, end, Role.CLIENT, (port, 8080), len(REQUEST), len(RESPONSE), ts, 40
            )
        )
    return out


def collector(sink_port: int) -> Collector:
    """Spans over OTLP/gRPC, RED metrics over OTLP/gRPC every 10 s, no span budget."""
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EBPF_SPAN_BUDGET="0",
        OTEL_METRIC_EXPORT_INTERVAL="10000",
    )
    return Collector(load())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-out", help="also write the profile here (pstats)")
    parser.add_argument(
        "--red-in-user-space",
        action="store_true",
        help="RED measured from each span, as for protocols the kernel does not count",
    )
    parser.add_argument(
        "--new-connections",
        choices=["traced", "shed"],
        help="each request on a connection of its own; `shed`: the kernel shed it",
    )
    args = parser.parse_args()
    if args.new_connections:
        raw = new_connection_records(
            args.requests, args.new_connections == "shed", not args.red_in_user_space
        )
    else:
        raw = records(args.requests, not args.red_in_user_space)
    with null_sink() as port:
        c = collector(port)
        settle_heap()  # as the collector does once ready
        handle = c._on_kernel_event
        profile = cProfile.Profile() if args.profile else None
        cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        if profile:
            profile.enable()
        for record in raw:
            event = decode(record)
            if event is not None:
                handle(event)
        c.tracker.release_held()
        c.tracker.close_all(time.monotonic_ns())  # answers held for their ACK go
        if profile:
            profile.disable()
        thread = time.thread_time() - thread0
        for batcher in c._batchers:
            batcher.force_flush()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        built, exported = c.telemetry.spans_built, c.telemetry.spans_exported
        for batcher in c._batchers:
            batcher.shutdown(5.0)
        if c.metrics is not None:  # its last export while the sink still listens
            c.metrics.shutdown(5.0)
    n = args.requests
    print(
        f"pipeline: {n} requests ({len(raw)} records), {built} spans built, "
        f"{exported} exported in {wall:.2f} s; CPU per request: processing thread "
        f"{thread / n * 1e6:.1f} us, whole process {cpu / n * 1e6:.1f} us; event path "
        f"{native.status()}"
    )
    if profile:
        if args.profile_out:
            profile.dump_stats(args.profile_out)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    spans = 0 if args.new_connections == "shed" else 2 * n
    return 0 if built == exported == spans else 1


if __name__ == "__main__":
    sys.exit(main())
