"""Faults made on the project's own test hosts (two network namespaces and a veth):
packet loss raises retransmits for exactly that peer, and spans carry them."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import HERE, CollectorProcess, NetnsHosts, end_process, free_port, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink

# Loss on the wire as the server's host receives it: 30 % of the client's data
# segments (requests; bare ACKs pass) never arrive, so the client retransmits
# within the request, before its response can come. (Dropped in the sender's own
# output hook, TCP would just resend without counting a retransmission.) The
# segment after a dropped one on its connection always passes (the connection's
# mark says one was dropped): a segment lost at random could be lost again at each
# retransmission, and seven in a row (0.3 ** 7 a segment, about 1 % of a run)
# outlast the client's 30 s of backed-off timeouts.
LOSS = "ip saddr 10.77.0.1 tcp dport %d ip length > 100"


def _loss(segments: str) -> str:
    """The ruleset that drops 30 % of the `segments` matched, never two in a row
    on one connection."""
    return f"""
table inet oe_test {{
  chain in {{
    type filter hook input priority 0;
    {segments} ct mark 1 ct mark set 0 accept
    {segments} numgen random mod 100 < 30 ct mark set 1 drop
  }}
}}
"""


PATH = "/big/2000"


@pytest.fixture(scope="module")
def hosts() -> Iterator[NetnsHosts]:
    h = NetnsHosts()
    yield h
    h.close()


def test_packet_loss_shows_as_retransmits_for_that_peer_only(
    collector: CollectorProcess, grpc_sink: GrpcSink, hosts: NetnsHosts
) -> None:
    port = free_port()
    with _server_host(hosts, port, "loss-server"):

        def retransmits() -> int:
            series = grpc_sink.metrics.series(
                "otel_ebpf.tcp.retransmits",
                **{"service.name": "loss-client", "network.peer.address": hosts.server_ip},
            )
            return int(sum(p.value for p in series.values()))

        def client(n: int) -> None:
            argv = [sys.executable, str(HERE / "netns_client.py"), hosts.server_ip, str(port)]
            env = {**os.environ, "OTEL_SERVICE_NAME": "loss-client"}
            assert hosts.run(hosts.client_ns, [*argv, PATH, str(n)], env=env).wait(120) == 0

        since = time.time_ns()
        client(10)  # no loss yet
        time.sleep(2.5)  # closes counted and exported (1 s interval)
        assert retransmits() == 0
        clean = _spans(grpc_sink, CLIENT, port, since)
        assert len(clean) >= 10 and all(
            s.attributes["otel_ebpf.tcp.retransmits"] == 0 for s in clean
        )

        hosts.nft(hosts.server_ns, _loss(LOSS % port))
        since = time.time_ns()
        client(30)  # P(no request lost) = 0.7 ** 30, about 2e-5
        wait_until(lambda: retransmits() > 0, 30, "retransmits for the lossy peer")
        wait_until(lambda: len(_spans(grpc_sink, CLIENT, port, since)) >= 30, 30, "30 spans")
        lossy = _spans(grpc_sink, CLIENT, port, since)
        assert sum(s.attributes["otel_ebpf.tcp.retransmits"] for s in lossy) > 0
        # a request that waited for a retransmission timeout (tens of clean
        # round trips) is the network's
        slow = _slow(lossy, clean)
        assert slow and all(s.attributes["otel_ebpf.verdict"] == "network" for s in slow)
        # ... and carries the retransmits. Most, not all: now and then a request
        # stalls ~200 ms with no retransmission of its own (the kernel's count of
        # them equals TcpRetransSegs, and the collector sees every one of those).
        counted = [s for s in slow if s.attributes["otel_ebpf.tcp.retransmits"] > 0]
        assert len(counted) * 4 >= len(slow) * 3, [dict(s.attributes) for s in slow]
        # Only that peer: this service has no other peer with retransmits.
        others = grpc_sink.metrics.series(
            "otel_ebpf.tcp.retransmits", **{"service.name": "loss-client"}
        )
        assert {dict(a)["network.peer.address"] for a in others} == {hosts.server_ip}


@contextlib.contextmanager
def _server_host(hosts: NetnsHosts, port: int, service: str) -> Iterator[None]:
    """The test HTTP server on the server host, as `service`."""
    env = {**os.environ, "OTEL_SERVICE_NAME": service}
    argv = [sys.executable, str(HERE / "py_http_server.py"), str(port), hosts.server_ip]
    server = hosts.run(hosts.server_ns, argv, env=env)
    try:
        wait_until(lambda: _answers(hosts, port), 15, "server in its namespace")
        yield
    finally:
        end_process(server)


def _shape(hosts: NetnsHosts, action: str, *qdisc: str) -> None:
    """tc on the server host's end of the veth (replace a qdisc, or delete it)."""
    argv = ["ip", "netns", "exec", hosts.server_ns, "tc", "qdisc", action, "dev", "oe-vb", "root"]
    subprocess.run([*argv, *qdisc], check=action != "del", capture_output=True)


def _answers(hosts: NetnsHosts, port: int) -> bool:
    argv = [sys.executable, str(HERE / "netns_client.py"), hosts.server_ip, str(port), "/", "1"]
    return hosts.run(hosts.client_ns, argv, stderr=-3).wait(10) == 0


def _duration(span: Any) -> int:
    return int(span.end_ns - span.start_ns)


def _slow(lossy: list[Any], clean: list[Any]) -> list[Any]:
    """The lossy requests that waited for a retransmission timeout: tens of clean
    round trips, and at least half the slowest one's time (the timeouts are the
    slowest by far; a request slowed by a busy machine alone is neither)."""
    limit = max(50 * statistics.median(map(_duration, clean)), max(map(_duration, lossy)) / 2)
    return [s for s in lossy if _duration(s) > limit]


def _wait_for_spans(sink: GrpcSink, port: int, since: int, n: int) -> None:
    """Until both sides have reported n requests."""
    wait_until(
        lambda: all(len(_spans(sink, kind, port, since)) >= n for kind in (SERVER, CLIENT)),
        30,
        f"{n} spans each side",
    )


def _spans(sink: GrpcSink, kind: int, port: int, since: int) -> list:  # type: ignore[type-arg]
    return [
        s
        for s in list(sink.store.spans)
        if s.kind == kind
        and s.start_ns >= since
        and s.attributes.get("server.port") == port
        and s.attributes.get("url.path") == PATH
    ]


# Loss on the way back: 30 % of the server's data segments (its answers) never
# reach the client's host, so the server retransmits after its last write.
LOSS_BACK = "ip saddr 10.77.0.2 tcp sport %d ip length > 100"


def test_answers_lost_on_the_way_back_show_on_exactly_their_requests(
    collector: CollectorProcess, grpc_sink: GrpcSink, hosts: NetnsHosts
) -> None:
    """The server's retransmits come after its last write: its span waits for them
    (until the connection's next event), and the client's span says network."""
    port = free_port()
    with _server_host(hosts, port, "download-server"):
        argv = [sys.executable, str(HERE / "netns_client.py"), hosts.server_ip, str(port)]

        def client(n: int) -> None:
            assert hosts.run(hosts.client_ns, [*argv, PATH, str(n)]).wait(120) == 0

        since = time.time_ns()
        client(10)
        _wait_for_spans(grpc_sink, port, since, 10)
        assert all(
            s.attributes["otel_ebpf.tcp.retransmits"] == 0
            for s in _spans(grpc_sink, SERVER, port, since)
        )
        clean = _spans(grpc_sink, CLIENT, port, since)

        hosts.nft(hosts.client_ns, _loss(LOSS_BACK % port))
        try:
            since = time.time_ns()
            client(30)  # P(no answer lost) = 0.7 ** 30, about 2e-5
        finally:
            hosts.nft(hosts.client_ns, "")
        _wait_for_spans(grpc_sink, port, since, 30)
        # A request whose answer was lost waited for a retransmission timeout
        # (tens of clean round trips): that client span is the network's, and its
        # server's span carries the retransmits.
        retransmits = {
            s.parent_span_id: s.attributes["otel_ebpf.tcp.retransmits"]
            for s in _spans(grpc_sink, SERVER, port, since)
        }
        slow = _slow(_spans(grpc_sink, CLIENT, port, since), clean)
        assert slow, "no answer was lost"
        for span in slow:
            a = span.attributes
            assert a["otel_ebpf.verdict"] == "network", a
            assert retransmits[span.span_id] > 0


BLACKHOLE = """
table inet oe_test {
  chain in {
    type filter hook input priority 0;
    tcp dport %d drop
  }
}
"""


def test_connecting_to_a_blackholed_address_is_a_timeout_failure(
    collector: CollectorProcess, grpc_sink: GrpcSink, hosts: NetnsHosts
) -> None:
    port = free_port()
    hosts.nft(hosts.server_ns, BLACKHOLE % port)  # SYNs vanish: no RST, no answer
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('{hosts.server_ip}', {port}), timeout=2.5)\n"
        "except TimeoutError:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    env = {**os.environ, "OTEL_SERVICE_NAME": "fault-client"}
    assert hosts.run(hosts.client_ns, [sys.executable, "-c", code], env=env).wait(30) == 0

    def failures() -> dict[str, int]:
        series = grpc_sink.metrics.series(
            "otel_ebpf.tcp.connections.failed", **{"service.name": "fault-client"}
        )
        return {
            dict(a)["otel_ebpf.tcp.failure"]: int(p.value)
            for a, p in series.items()
            if dict(a).get("server.port") == port
        }

    wait_until(lambda: failures() == {"timeout": 1}, 30, "a timeout failure")


def test_time_split_points_at_the_server_or_at_the_link(
    collector: CollectorProcess, grpc_sink: GrpcSink, hosts: NetnsHosts
) -> None:
    """A handler that sleeps 300 ms: the server's share dominates. A large response
    over a 2 Mbit/s link (tbf on the server's veth): the network's share does."""
    port = free_port()
    with _server_host(hosts, port, "split-server"):
        since = time.time_ns()
        client = [sys.executable, str(HERE / "netns_client.py"), hosts.server_ip, str(port)]
        assert hosts.run(hosts.client_ns, [*client, "/sleep/300", "1"]).wait(30) == 0
        _shape(hosts, "replace", "tbf", "rate", "2mbit", "burst", "16kb", "latency", "500ms")
        try:
            assert hosts.run(hosts.client_ns, [*client, "/big/300000", "1"]).wait(60) == 0
        finally:
            _shape(hosts, "del")

        def split(path: str, kind: int = CLIENT) -> dict[str, Any] | None:
            for s in list(grpc_sink.store.spans):
                a = s.attributes
                if (
                    s.kind == kind
                    and s.start_ns >= since
                    and a.get("url.path") == path
                    and a.get("server.port") == port
                    and "otel_ebpf.time.server" in a
                ):
                    return {
                        "server": a["otel_ebpf.time.server"],
                        "network": a["otel_ebpf.time.network"],
                        "verdict": a["otel_ebpf.verdict"],
                    }
            return None

        wait_until(lambda: split("/sleep/300") and split("/big/300000"), 30, "both splits")
        slow_server, slow_link = split("/sleep/300"), split("/big/300000")
        assert slow_server and slow_link
        assert slow_server["server"] > 4 * slow_server["network"]
        assert slow_link["network"] > 4 * slow_link["server"]  # 300 kB at 2 Mbit/s
        assert (slow_server["verdict"], slow_link["verdict"]) == ("server", "network")
        # The slow handler's own span says so too. (The large answer goes out in one
        # blocking send, which begins where the server's span ends: the transfer is
        # on the client's span; test_slow_requests has nginx's non-blocking case.)
        wait_until(lambda: split("/sleep/300", SERVER), 30, "the server's span")
        assert split("/sleep/300", SERVER)["verdict"] == "server"  # type: ignore[index]


NEVER_ACCEPTS = """
import socket, sys, time
listener = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=1)
print("ready", flush=True)
time.sleep(120)
"""
FLOOD = """
import socket, sys
held = []
for _ in range(8):
    try:
        held.append(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5))
    except OSError:
        pass
"""


def test_a_full_accept_queue_is_reported_for_its_namespace(
    collector: CollectorProcess, grpc_sink: GrpcSink, hosts: NetnsHosts
) -> None:
    """No tracepoint sees it: the namespace's ListenOverflows counter does."""
    port, full_port = free_port(), free_port()
    with _server_host(hosts, port, "backlog-server"):  # a traced service in that namespace
        assert _answers(hosts, port)
        argv = [sys.executable, "-c", NEVER_ACCEPTS, hosts.server_ip, str(full_port)]
        listener = hosts.run(hosts.server_ns, argv, stdout=subprocess.PIPE)
        try:
            assert listener.stdout is not None and listener.stdout.readline() == b"ready\n"
            time.sleep(1.5)  # a scan takes the namespace's baseline
            flood = [sys.executable, "-c", FLOOD, hosts.server_ip, str(full_port)]
            assert hosts.run(hosts.client_ns, flood).wait(30) == 0

            def overflows() -> int:
                series = grpc_sink.metrics.series(
                    "otel_ebpf.tcp.listen_overflows", **{"service.name": "backlog-server"}
                )
                return int(sum(p.value for p in series.values()))

            wait_until(lambda: overflows() > 0, 30, "listen overflows for that namespace")
        finally:
            end_process(listener)
    log = collector.log_path.read_text()
    assert "listen queue overflowed" in log and "backlog-server" in log
