"""Ring-buffer records as the kernel program writes them, for tests and benches
that drive the event path from `decode` on, and a tracker that builds spans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from otel_ebpf.model import Role
from otel_ebpf.processes import ProcessRegistry
from otel_ebpf.processors.selection import Selector
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.processors.streams import ConnectionTracker
from otel_ebpf.receivers.sockets import _CONN, _DATA_HEADER, _EV_CLOSE, _EV_DATA, _EV_OPEN
from otel_ebpf.telemetry import SelfTelemetry

LOOPBACK = bytes([127, 0, 0, 1]) + bytes(12)
PID = 4242


def open_record(sk: int, role: Role, local_port: int, remote_port: int, ts: int = 1) -> bytes:
    return _CONN.pack(
        *(_EV_OPEN, int(role), 2, PID, sk, ts, 0, 0, local_port, remote_port),
        *(LOOPBACK, LOOPBACK, 0, 0, 0, 0, 0, 0),
    )


def close_record(
    sk: int,
    ts: int,
    role: Role = Role.UNKNOWN,
    ports: tuple[int, int] = (0, 0),
    sent: int = 0,
    received: int = 0,
    opened: int = 0,
    srtt_us: int = 0,
) -> bytes:
    """A close from ESTABLISHED; `ports`: local, remote."""
    return _CONN.pack(
        *(_EV_CLOSE, int(role), 2, PID, sk, ts, sent, received, *ports),
        *(LOOPBACK, LOOPBACK, opened, 0, srtt_us, 0, 0, 1),
    )


def data_record(
    sk: int,
    role: Role,
    egress: bool,
    ts: int,
    offset: int,
    data: bytes,
    capture: int = 1024,
    red_counted: bool = False,
    after_shed: bool = False,
    rand: int = 0,
    threshold: int = 0,
    goroutine: tuple[int, int] = (0, 0),
    task: int = 0,
    task_cause: int = 0,
    retransmit_stamp: int = 0,
) -> bytes:
    """One send (egress) or receive of `data` at stream `offset`, its first
    `capture` bytes kept."""
    payload = data[:capture]
    header = _DATA_HEADER.pack(
        *(_EV_DATA, int(not egress), int(role), 1, PID, PID, 5, sk, 1, ts, offset, offset),
        *(len(data), len(payload), b"app\0", 0, 0, bytes(16), 0, 0, 0, int(red_counted)),
        *(int(after_shed), 0, 0, retransmit_stamp, rand, threshold, *goroutine, task),
        task_cause,
    )
    return header + payload


def traced(tmp_path: Path) -> tuple[ConnectionTracker, list[Any]]:
    """A tracker whose exchanges are built into spans (the list it fills); no
    process of `tmp_path` exists, so names come from the events."""
    builder = SpanBuilder(0)
    spans: list[Any] = []
    t = ConnectionTracker(
        lambda x, conn: spans.append(builder.build(x, conn)),
        ProcessRegistry(proc=str(tmp_path)),
        Selector(),
        SelfTelemetry(),
    )
    return t, spans
