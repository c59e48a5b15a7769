"""Records the main ring buffer refused come back through the spare ring in the
place they were written: a connection's later calls do not go on without them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from records import data_record, open_record

from fake_ring import FakeRing
from otel_ebpf.model import DataEvent, Direction, HttpExchange, Role, SelfConn
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.receivers import sockets
from otel_ebpf.receivers.ringbuf import RingBufferReader
from otel_ebpf.receivers.sockets import SocketReceiver
from otel_ebpf.receivers.spare_ring import SpareRecords
from otel_ebpf.telemetry import SelfTelemetry

RING = 1 << 16
SK = 7
EXCHANGES = 40  # more calls than a connection holds back waiting for an earlier one


class Rings:
    """A receiver reading two fake rings, its events parsed by a real tracker."""

    def __init__(self, tmp_path: Path) -> None:
        self.main = FakeRing(tmp_path / "events", RING)
        self.spare = FakeRing(tmp_path / "spare_events", RING)
        self.telemetry = SelfTelemetry()
        self.exchanges: list[Any] = []
        self.tracker = ConnectionTracker(
            lambda x, _conn: self.exchanges.append(x),
            ProcessRegistry(proc=str(tmp_path)),
            Selector(),
            self.telemetry,
        )
        self.receiver = SocketReceiver(self.tracker.handle)
        self.receiver._bpf = object()  # loaded, as far as poll() can tell
        self.receiver._reader = RingBufferReader(self.main.fd, RING)
        self.receiver._spare = RingBufferReader(self.spare.fd, RING)

    def poll_until_read(self) -> int:
        """Polls as the pipeline's loop does; returns how many polls it took."""
        polls = 1
        while self.receiver.poll():
            polls += 1
        self.tracker.release_held()
        return polls


def client_exchanges(rings: Rings, refused: int) -> None:
    """EXCHANGES requests and answers on one connection, timed 10 ns apart; the
    request of exchange `refused` went to the spare ring."""
    rings.main.write(open_record(SK, Role.CLIENT, 40000, 8080, ts=1))
    sent = received = 0
    for i in range(EXCHANGES):
        request = f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        answer = b"HTTP/1.1 204 No Content\r\n\r\n"
        ring = rings.spare if i == refused else rings.main
        ring.write(data_record(SK, Role.CLIENT, True, 10 + 20 * i, sent, request))
        rings.main.write(data_record(SK, Role.CLIENT, False, 20 + 20 * i, received, answer))
        sent, received = sent + len(request), received + len(answer)


def targets(rings: Rings) -> list[str]:
    return [x.request.target for x in rings.exchanges if isinstance(x, HttpExchange)]


def test_a_request_the_main_ring_refused_is_parsed_in_its_place(tmp_path: Path) -> None:
    rings = Rings(tmp_path)
    client_exchanges(rings, refused=2)
    rings.poll_until_read()
    assert targets(rings) == [f"/{i}" for i in range(EXCHANGES)]
    assert (rings.telemetry.events_late, rings.telemetry.parse_errors) == (0, 0)


def test_a_spare_record_newer_than_a_full_batch_waits_for_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sockets, "DRAIN_BATCH", 8)
    rings = Rings(tmp_path)
    client_exchanges(rings, refused=30)  # its main neighbours are batches away
    assert rings.poll_until_read() > 2
    assert targets(rings) == [f"/{i}" for i in range(EXCHANGES)]
    assert (rings.telemetry.events_late, rings.telemetry.parse_errors) == (0, 0)
    assert rings.receiver.events_received == 2 * EXCHANGES + 1


def test_spare_records_come_out_by_the_time_they_were_written() -> None:
    def data(ts: int) -> DataEvent:
        return DataEvent(SK, 1, Direction.EGRESS, Role.CLIENT, 1, 1, 3, ts, 0, 1, 0, b"x", b"app")

    spare = SpareRecords()
    spare.add([data(30), SelfConn(9), data(10)])
    spare.add([data(20)])
    assert spare.written_before(data(5)) == [SelfConn(9)]
    assert [e.ts for e in spare.written_before(data(20))] == [10, 20]
    assert spare and [e.ts for e in spare.take_all()] == [30]
    assert not spare and spare.take_all() == []
