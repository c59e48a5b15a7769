"""TCP health totals: closes, live scans, top-N by volume (pure logic, SDK in-memory reader)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from metric_points import points
from otel_ebpf.metrics import CollectorMetrics
from otel_ebpf.model import ConnClose, ConnCounters, Endpoint, Role
from otel_ebpf.processors.tcp_health import OVERFLOW_PEER, RERANK_INTERVAL_NS, TcpHealth
from otel_ebpf.telemetry import SelfTelemetry

SERVER_END, CLIENT_END = Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 50000)
Ends = tuple[Role, Endpoint | None, Endpoint | None]


def setup(top_n: int = 500) -> tuple[TcpHealth, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    metrics = CollectorMetrics([reader], SelfTelemetry())
    return TcpHealth(metrics, lambda pid: f"svc-{pid}", top_n=top_n), reader


def close(sk: int, opened: int, tx: int, rx: int, peer: str = "10.0.0.1", **kw: Any) -> ConnClose:
    return ConnClose(
        sk,
        opened + 2_000_000_000,
        tx,
        rx,
        Role.CLIENT,
        42,
        CLIENT_END,
        Endpoint(peer, 8080),
        opened,
        **kw,
    )


def live(sk: int, gen: int, tx: int, rx: int, retrans: int = 0) -> ConnCounters:
    return ConnCounters(sk, gen, 42, Role.CLIENT, tx, rx, retrans, 0, 0)


def test_closes_count_failures_retransmits_bytes_and_lifetime() -> None:
    tcp, reader = setup()
    tcp.closed(close(9, 5, 0, 0, resets_in=1, connect_failed=True))
    tcp.closed(close(10, 1_000_000_000, 500, 90_000, retransmits=4, srtt_us=250))
    tcp.closed(close(11, 5, 10, 10, resets_in=1))  # opened, then aborted by the peer
    failed = {
        p.attributes["otel_ebpf.tcp.failure"]: p
        for p in points(reader, "otel_ebpf.tcp.connections.failed")
    }
    assert failed["refused"].value == 1 and failed["reset"].value == 1
    failed = failed["refused"]
    assert failed.attributes["service.name"] == "svc-42"
    (retrans,) = points(reader, "otel_ebpf.tcp.retransmits")
    assert retrans.value == 4 and retrans.attributes["server.port"] == 8080
    (duration,) = points(reader, "otel_ebpf.tcp.connection.duration")
    assert duration.count == 2 and duration.sum == 4.0
    (opened,) = points(reader, "otel_ebpf.tcp.connections.opened")
    assert opened.value == 2 and opened.attributes["direction"] == "active"
    sent = {
        p.attributes["network.io.direction"]: p.value for p in points(reader, "otel_ebpf.tcp.bytes")
    }
    assert sent == {"transmit": 510, "receive": 90_010}


def test_live_connections_report_before_they_close_and_are_counted_once() -> None:
    tcp, reader = setup()
    ends: dict[tuple[int, int], Ends] = {(7, 100): (Role.CLIENT, CLIENT_END, SERVER_END)}

    def by_ends(sk: int, gen: int) -> Ends | None:
        return ends.get((sk, gen))

    tcp.scan([live(7, 100, 1_000, 5_000, retrans=1)], by_ends, 0)
    bytes_now = {
        p.attributes["network.io.direction"]: p.value for p in points(reader, "otel_ebpf.tcp.bytes")
    }
    assert bytes_now == {"transmit": 1_000, "receive": 5_000}  # still open, already counted
    tcp.scan([live(7, 100, 3_000, 9_000, retrans=1)], by_ends, 1)
    tcp.closed(close(7, 100, 4_000, 9_500, retransmits=3))
    bytes_end = {
        p.attributes["network.io.direction"]: p.value for p in points(reader, "otel_ebpf.tcp.bytes")
    }
    assert bytes_end == {"transmit": 4_000, "receive": 9_500}
    (opened,) = points(reader, "otel_ebpf.tcp.connections.opened")
    (retrans,) = points(reader, "otel_ebpf.tcp.retransmits")
    assert opened.value == 1 and retrans.value == 3


def test_a_connection_opened_before_the_probes_reports_with_the_trackers_role() -> None:
    """The kernel saw it first mid-stream (role unknown); the tracker knows its ends."""
    tcp, reader = setup()
    ends: dict[tuple[int, int], Ends] = {(7, 100): (Role.CLIENT, CLIENT_END, SERVER_END)}
    unknown = live(7, 100, 1_000, 5_000)._replace(role=Role.UNKNOWN)
    tcp.scan([unknown], lambda sk, gen: ends.get((sk, gen)), 0)
    tcp.closed(close(7, 100, 4_000, 9_500)._replace(role=Role.UNKNOWN))
    bytes_end = {
        p.attributes["network.io.direction"]: p.value for p in points(reader, "otel_ebpf.tcp.bytes")
    }
    assert bytes_end == {"transmit": 4_000, "receive": 9_500}  # live, then the rest at close
    (opened,) = points(reader, "otel_ebpf.tcp.connections.opened")
    assert opened.value == 1


def test_a_connection_whose_close_was_lost_is_forgotten_after_two_scans() -> None:
    tcp, _ = setup()
    ends: dict[tuple[int, int], Ends] = {(7, 100): (Role.CLIENT, CLIENT_END, SERVER_END)}
    tcp.scan([live(7, 100, 10, 10)], lambda sk, gen: ends.get((sk, gen)), 0)
    tcp.scan([], lambda sk, gen: None, 1)
    assert tcp._reported  # one missing scan: its close may still be queued
    tcp.scan([], lambda sk, gen: None, 2)
    assert not tcp._reported


def test_the_heaviest_peers_get_their_own_series_and_totals_are_conserved() -> None:
    tcp, reader = setup(top_n=3)
    sk = 0
    for i in range(50):  # 50 quiet peers arrive first and fill the slots
        sk += 1
        tcp.closed(close(sk, 1, 10, 10, peer=f"10.1.0.{i}"))
    for _ in range(5):  # then one heavy peer
        sk += 1
        tcp.closed(close(sk, 1, 1_000_000, 1_000_000, peer="10.9.9.9"))
    before = {
        (p.attributes["network.peer.address"], p.attributes["network.io.direction"]): p.value
        for p in points(reader, "otel_ebpf.tcp.bytes")
    }
    assert ("10.9.9.9", "transmit") not in before  # first come, first served so far
    tcp.maintain(RERANK_INTERVAL_NS)
    sk += 1
    tcp.closed(close(sk, 1, 1_000_000, 1_000_000, peer="10.9.9.9"))
    series = points(reader, "otel_ebpf.tcp.bytes")
    peers = {p.attributes["network.peer.address"] for p in series}
    assert "10.9.9.9" in peers and OVERFLOW_PEER in peers and len(peers) <= 3 + 1
    total_tx = sum(p.value for p in series if p.attributes["network.io.direction"] == "transmit")
    assert total_tx == 50 * 10 + 6 * 1_000_000  # every byte in exactly one series
    after = {
        (p.attributes["network.peer.address"], p.attributes["network.io.direction"]): p.value
        for p in series
    }
    assert after[(OVERFLOW_PEER, "transmit")] >= before[(OVERFLOW_PEER, "transmit")]  # monotonic


def test_a_new_peer_after_a_rerank_has_its_own_series_from_its_first_bytes() -> None:
    tcp, reader = setup(top_n=20)
    for i in range(100):  # more peers than places
        tcp.closed(close(i + 1, 1, 10, 10, peer=f"10.1.0.{i}"))
    tcp.maintain(RERANK_INTERVAL_NS)
    tcp.closed(close(1000, 1, 500, 0, peer="10.9.9.9"))
    series = points(reader, "otel_ebpf.tcp.bytes")
    mine = [p.value for p in series if p.attributes["network.peer.address"] == "10.9.9.9"]
    assert mine == [500]
    assert len({p.attributes["network.peer.address"] for p in series}) <= 20 + 1


def test_ten_thousand_peers_stay_under_the_cap() -> None:
    tcp, reader = setup(top_n=500)
    for i in range(10_000):
        tcp.closed(close(i + 1, 1, 100 + i, 100, peer=f"10.{i // 250}.{i % 250}.1"))
        if i % 1000 == 999:
            tcp.maintain((i // 1000 + 1) * RERANK_INTERVAL_NS)
    series = points(reader, "otel_ebpf.tcp.connections.opened")
    assert len(series) <= 500 + 1
    assert sum(p.value for p in series) == 10_000
    assert len(tcp._volume) <= 4 * 500
