"""The collector's own connections: known without reading /proc where it can be."""

from __future__ import annotations

import pytest

from otel_ebpf.model import ConnOpen, Endpoint, OtlpSender, Role
from otel_ebpf.processors.own_traffic import OwnTraffic


@pytest.fixture
def own() -> tuple[OwnTraffic, list[int]]:
    """OwnTraffic whose /proc scans are counted, not made."""
    scans: list[int] = []
    return OwnTraffic(lambda pid: scans.append(1) or []), scans


def test_a_health_check_known_from_its_open_reads_no_proc(
    own: tuple[OwnTraffic, list[int]],
) -> None:
    traffic, scans = own
    traffic.add_listener(13133)
    local, remote = Endpoint("127.0.0.1", 13133), Endpoint("127.0.0.1", 40000)
    assert traffic.opened(ConnOpen(7, 1, Role.SERVER, 1234, local, remote, False))
    traffic.seen_using(7, None)  # the kernel then sees us read it
    assert scans == [] and 7 in traffic
    assert traffic.is_peer(remote, local, fresh=True)


def test_a_socket_older_than_the_probes_is_looked_up(own: tuple[OwnTraffic, list[int]]) -> None:
    traffic, scans = own
    traffic.seen_using(8, None)
    assert scans == [1] and 8 in traffic
    ends = (Endpoint("127.0.0.1", 5000), Endpoint("127.0.0.1", 4317))
    traffic.seen_using(9, ends)  # its ends known: nothing to read
    assert scans == [1] and traffic.is_peer(ends[1], ends[0], fresh=True)


def test_one_client_port_to_two_of_our_listeners_names_each_connections_process(
    own: tuple[OwnTraffic, list[int]],
) -> None:
    """Linux gives one local port to connections bound for different places at
    once: an app's SDK exporting to our OTLP port, and a monitor polling our
    health port from the same port number. The later connection must not take
    the SDK's spans for its own process (its traces would never merge)."""
    traffic, _ = own
    traffic.add_listener(4317)
    traffic.add_listener(13133)
    client = Endpoint("127.0.0.1", 51000)
    otlp, health = Endpoint("127.0.0.1", 4317), Endpoint("127.0.0.1", 13133)
    traffic.opened(ConnOpen(1, 1, Role.CLIENT, 8715, client, otlp, False))  # the app's SDK
    traffic.opened(ConnOpen(2, 2, Role.CLIENT, 4677, client, health, False))  # the monitor
    assert traffic.pid_of_peer(OtlpSender(client, 4317)) == 8715
    assert traffic.pid_of_peer(OtlpSender(client, 13133)) == 4677
