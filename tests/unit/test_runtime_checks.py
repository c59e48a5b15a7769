"""The runtime probes (OpenSSL, Go, asyncio, Node) look at a process new to them
once, not at each of its events, and again once one of them forgot it."""

from __future__ import annotations

from records import PID, data_record

from otel_ebpf.model import ProcessExec, Role
from otel_ebpf.pipeline import Collector
from otel_ebpf.receivers.sockets import decode

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class FakeProbes:
    """A runtime's probes: `checked` as the real ones keep it, and who was asked."""

    def __init__(self, can_look: bool = True) -> None:
        self.checked: set[int] = set()
        self.asked: list[int] = []
        self.can_look = can_look

    def check(self, pid: int) -> None:
        self.asked.append(pid)
        if self.can_look:
            self.checked.add(pid)


def _events(c: Collector, n: int, offset: int = 0) -> None:
    for i in range(n):
        at = offset + i * len(REQUEST)
        event = decode(data_record(0x1000, Role.SERVER, False, 1000 + at, at, REQUEST))
        c._on_kernel_event(event)


def _use(c: Collector, *probes: FakeProbes) -> None:
    c._runtime_probes = [(p.checked, p.check) for p in probes]


def test_each_runtime_looks_at_a_new_process_once(collector: Collector) -> None:
    tls, go = FakeProbes(), FakeProbes()
    _use(collector, tls, go)
    _events(collector, 5)
    assert tls.asked == [PID] and go.asked == [PID]


def test_a_runtime_that_could_not_look_is_asked_again(collector: Collector) -> None:
    """/proc may be unreadable for a moment: that runtime is asked at the next
    event, the others are not asked twice."""
    tls, node = FakeProbes(), FakeProbes(can_look=False)
    _use(collector, tls, node)
    _events(collector, 3)
    assert tls.asked == [PID] and node.asked == [PID] * 3
    node.can_look = True
    _events(collector, 3, offset=3 * len(REQUEST))
    assert tls.asked == [PID] and node.asked == [PID] * 4


def test_a_process_that_runs_a_new_program_is_looked_at_again(collector: Collector) -> None:
    asyncio = FakeProbes()
    _use(collector, asyncio)
    _events(collector, 2)
    asyncio.checked.discard(PID)  # as the real probes forget it at an exec
    collector._on_kernel_event(ProcessExec(PID))
    _events(collector, 2, offset=2 * len(REQUEST))
    assert asyncio.asked == [PID, PID]
