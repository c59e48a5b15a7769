"""Listen queue overflows per network namespace, from a /proc tree made here."""

from __future__ import annotations

import os
from pathlib import Path

from opentelemetry.sdk.resources import Resource

from otel_ebpf.backlog import ListenOverflows
from otel_ebpf.processes import ProcessInfo

NETSTAT = (
    "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n"
    "TcpExt: 0 {overflows} {overflows}\n"
    "IpExt: InNoRoutes\n"
    "IpExt: 0\n"
)


def process(proc: Path, pid: int, service: str, netns: Path, overflows: int) -> ProcessInfo:
    (proc / str(pid) / "ns").mkdir(parents=True)
    (proc / str(pid) / "net").mkdir()
    os.link(netns, proc / str(pid) / "ns" / "net")  # same inode: same namespace
    write(proc, pid, overflows)
    return ProcessInfo(pid, service, service, Resource({}))


def write(proc: Path, pid: int, overflows: int) -> None:
    (proc / str(pid) / "net" / "netstat").write_text(NETSTAT.format(overflows=overflows))


def test_new_overflows_are_reported_per_namespace_after_a_baseline(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    pod, host = tmp_path / "pod-netns", tmp_path / "host-netns"
    pod.touch()
    host.touch()
    processes = [
        process(proc, 10, "shop", pod, overflows=7),
        process(proc, 11, "shop", pod, overflows=7),
        process(proc, 20, "api", host, overflows=3),
        process(proc, 21, "db", host, overflows=3),
    ]
    backlog = ListenOverflows(str(proc))
    assert backlog.scan(processes) == []  # what overflowed before we looked is not new
    write(proc, 10, 12)
    write(proc, 11, 12)
    (found,) = backlog.scan(processes)
    assert (found.services, found.dropped) == (("shop",), 5)
    assert found.netns == os.stat(pod).st_ino
    write(proc, 20, 4)
    write(proc, 21, 4)
    (found,) = backlog.scan(processes)
    assert (found.services, found.dropped) == (("api", "db"), 1)
    assert backlog.scan(processes) == []


def test_gone_or_unreadable_processes_are_skipped(tmp_path: Path) -> None:
    backlog = ListenOverflows(str(tmp_path))
    gone = ProcessInfo(99, "x", "x", Resource({}))
    assert backlog.scan([gone]) == []
