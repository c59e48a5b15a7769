"""DNS lookups by real resolvers: dig (Debian) and glibc's getaddrinfo from Python,
against a real dnsmasq, and a server that never answers."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import (
    HERE,
    CollectorProcess,
    Dnsmasq,
    end_process,
    file_resource_spans,
    free_port,
    listening,
    wait_until,
    with_resolver,
)
from otel_ebpf.model import DatagramEvent, KernelEvent
from otel_ebpf.receivers.sockets import SocketReceiver
from otlp_sink import CLIENT, SERVER, GrpcSink, Span


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[Dnsmasq]:
    server = Dnsmasq()
    yield server
    server.stop()


def lookups(sink: GrpcSink, name: str, since: int) -> list[Span]:
    return [
        s
        for s in list(sink.store.spans)
        if s.kind == CLIENT
        and s.start_ns >= since
        and s.attributes.get("dns.question.name") == name
    ]


def wait_lookups(sink: GrpcSink, name: str, since: int, n: int, timeout: float = 30) -> list[Span]:
    wait_until(lambda: len(lookups(sink, name, since)) >= n, timeout, f"{n} lookups of {name}")
    time.sleep(0.5)
    return lookups(sink, name, since)


def dig(server: str, name: str, *options: str) -> str:
    argv = ["dig", f"@{server}", name, "A", "+tries=1", "+timeout=1", *options]
    return subprocess.run(argv, capture_output=True, text=True).stdout


def test_dig_answers_and_nxdomain(
    collector: CollectorProcess, grpc_sink: GrpcSink, dnsmasq: Dnsmasq
) -> None:
    since = time.time_ns()
    assert "10.1.2.3" in dig(dnsmasq.address, "www.example.test", "+short")
    assert "NXDOMAIN" in dig(dnsmasq.address, "missing.nx.test")
    (ok,) = wait_lookups(grpc_sink, "www.example.test", since, 1)
    assert ok.name == "DNS A" and ok.service == "dig" and ok.status_code == 0
    assert ok.attributes["dns.answers"] == ["10.1.2.3"]
    assert ok.attributes["otel_ebpf.dns.response_code"] == "NOERROR"
    assert ok.attributes["server.address"] == dnsmasq.address
    assert ok.attributes["server.port"] == 53 and ok.attributes["network.transport"] == "udp"
    (nx,) = wait_lookups(grpc_sink, "missing.nx.test", since, 1)
    assert nx.status_code == 2 and nx.attributes["error.type"] == "NXDOMAIN"


def test_events_name_the_process_not_its_network_thread(dnsmasq: Dnsmasq) -> None:
    """dig does its I/O on a thread named isc-net-0000 and exits at once, often
    before user space reads /proc: the kernel's events must carry "dig" (a
    receiver of our own here, to read the raw events)."""
    events: list[KernelEvent] = []
    receiver = SocketReceiver(events.append, ring_buffer_pages=64)
    receiver.start()
    try:
        client = subprocess.Popen(
            ["dig", f"@{dnsmasq.address}", "www.example.test", "A", "+tries=1", "+short"],
            stdout=subprocess.DEVNULL,
        )
        client.wait(10)

        def datagrams() -> list[DatagramEvent]:
            receiver.poll()
            return [e for e in events if isinstance(e, DatagramEvent) and e.pid == client.pid]

        wait_until(lambda: len(datagrams()) >= 2, 10, "dig's query and answer")
        mine = datagrams()
    finally:
        receiver.close()
    assert {e.tid for e in mine} != {client.pid}  # the I/O was on another thread
    assert {e.comm.split(b"\0")[0] for e in mine} == {b"dig"}


def test_dns_over_tcp(collector: CollectorProcess, grpc_sink: GrpcSink, dnsmasq: Dnsmasq) -> None:
    since = time.time_ns()
    assert "10.1.2.3" in dig(dnsmasq.address, "www.example.test", "+short", "+tcp")
    (span,) = wait_lookups(grpc_sink, "www.example.test", since, 1)
    assert span.attributes["network.transport"] == "tcp" and span.service == "dig"
    assert span.attributes["dns.answers"] == ["10.1.2.3"] and span.status_code == 0


def test_getaddrinfo_from_python(
    collector: CollectorProcess, grpc_sink: GrpcSink, dnsmasq: Dnsmasq
) -> None:
    since = time.time_ns()
    code = "import socket; print(sorted({a[4][0] for a in socket.getaddrinfo('www.example.test', 80)}))"
    out = with_resolver(dnsmasq.address, [sys.executable, "-c", code])
    assert out.stdout.strip() == "['10.1.2.3', 'fd00::3']", out.stderr
    spans = wait_lookups(grpc_sink, "www.example.test", since, 2)
    # glibc asks for A and AAAA together (one sendmmsg): one span each.
    by_type = {s.attributes["otel_ebpf.dns.question.type"]: s for s in spans}
    assert sorted(by_type) == ["A", "AAAA"] and len(spans) == 2
    assert by_type["AAAA"].attributes["dns.answers"] == ["fd00::3"]
    assert all(s.service.startswith("python") for s in spans)


def test_silent_server_is_reported_as_timed_out(
    collector: CollectorProcess, grpc_sink: GrpcSink
) -> None:
    since = time.time_ns()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.53.2", 53))  # receives, never answers
        assert "timed out" in dig("127.0.53.2", "silent.example.test")
    # The collector's DNS timeout is 5 s by default: the span appears after it.
    (span,) = wait_lookups(grpc_sink, "silent.example.test", since, 1, timeout=30)
    assert span.status_code == 2 and span.attributes["error.type"] == "timeout"
    assert "otel_ebpf.dns.response_code" not in span.attributes


def test_a_resolver_on_a_port_pinned_to_dns_is_traced_over_udp_and_tcp(tmp_path: Path) -> None:
    """Consul's DNS port, pinned the documented way: the kernel captures UDP to it."""
    server = Dnsmasq("127.0.53.2", port=8600)
    out = tmp_path / "spans.jsonl"
    pinned = CollectorProcess(
        tmp_path / "pinned",
        {"file": {"path": str(out)}},
        extra_env={"OTEL_EBPF_PROTOCOL_PORTS": "8600=dns"},
    )
    try:
        for transport in ("+notcp", "+tcp"):
            answer = dig(server.address, "www.example.test", "-p", "8600", "+short", transport)
            assert "10.1.2.3" in answer
        time.sleep(1.0)
    finally:
        assert pinned.stop() == 0
        server.stop()
    seen = set()
    for rs in file_resource_spans(out):
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                a = {x["key"]: next(iter(x["value"].values())) for x in span["attributes"]}
                if a.get("dns.question.name") == "www.example.test":
                    seen.add((str(a["server.port"]), a["network.transport"]))
    assert seen == {("8600", "udp"), ("8600", "tcp")}


SERVER_SCRIPT = HERE / "py_http_server.py"
SILLY_RESOLVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    query, peer = sock.recvfrom(512)
    labels, i = [], 12
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode())
        i += 1 + query[i]
    first = labels[0] if labels else ""
    if first == "silent":
        continue  # never answers: the resolver times out
    rcode = 3 if first == "missing" else 2  # NXDOMAIN, else SERVFAIL
    flags = 0x8180 | rcode  # response, recursion desired and available
    sock.sendto(query[:2] + flags.to_bytes(2, "big") + query[4:6] + bytes(6) + query[12:], peer)
"""


def test_a_failed_lookup_behind_an_http_502_is_a_child_of_that_request(
    collector: CollectorProcess, grpc_sink: GrpcSink, tmp_path: Path
) -> None:
    """An HTTP server resolves a name per request and answers 502 when it cannot:
    NXDOMAIN, SERVFAIL and a resolver that never answers. Each lookup's span is
    a child of the 502's server span."""
    resolver = subprocess.Popen(
        [sys.executable, "-c", SILLY_RESOLVER, "127.0.53.4"], stdout=subprocess.PIPE
    )
    assert resolver.stdout is not None and resolver.stdout.readline() == b"ready\n"
    port = free_port()
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.53.4\noptions attempts:1 timeout:1\n")
    script = f'mount --bind {conf} /etc/resolv.conf && exec "$@"'
    server = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, str(SERVER_SCRIPT), str(port)],
        env={**os.environ, "OTEL_SERVICE_NAME": "resolving-server"},
    )
    try:
        wait_until(lambda: listening(port), 10, "the server listening")
        since = time.time_ns()
        for name in ("missing.example.test", "broken.example.test", "silent.example.test"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", f"/resolve/{name}")
            assert conn.getresponse().status == 502
            conn.close()

        def server_spans() -> dict[str, Span]:
            return {
                str(s.attributes["url.path"]).rsplit("/", 1)[1]: s
                for s in grpc_sink.store.matching(**{"server.port": port})
                if s.kind == SERVER and s.start_ns >= since
            }

        def lookups() -> dict[str, set[tuple[str, str]]]:
            found: dict[str, set[tuple[str, str]]] = {}
            for s in list(grpc_sink.store.spans):
                name = s.attributes.get("dns.question.name")
                if s.kind == CLIENT and s.start_ns >= since and name:
                    error = str(s.attributes["error.type"])
                    found.setdefault(str(name), set()).add((s.parent_span_id, error))
            return found

        # the silent resolver's lookups are reported after the DNS timeout (5 s)
        wait_until(lambda: len(server_spans()) == 3 and len(lookups()) == 3, 30, "all spans")
        servers, found = server_spans(), lookups()
        expected = {
            "missing.example.test": "NXDOMAIN",
            "broken.example.test": "SERVFAIL",
            "silent.example.test": "timeout",
        }
        for name, error in expected.items():
            assert servers[name].attributes["http.response.status_code"] == 502
            assert found[name] == {(servers[name].span_id, error)}, (name, found[name])
    finally:
        end_process(server)
        end_process(resolver)
