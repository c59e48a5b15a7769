"""Listen queues that overflowed, per network namespace.

No tracepoint fires when a completed handshake finds its listener's accept queue
full (the kernel counts it in `LINUX_MIB_LISTENOVERFLOWS` and drops the ACK), so
this reads the counter where Linux keeps it: `TcpExt: ListenOverflows` in
`/proc/<pid>/net/netstat`, one count per network namespace, not per socket. A
namespace is named by the traced services in it; in a pod that is the pod's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import NamedTuple

from otel_ebpf.processes import ProcessInfo

log = logging.getLogger(__name__)


class Overflows(NamedTuple):
    netns: int  # the namespace's inode number (as `ls -i /proc/<pid>/ns/net` shows)
    services: tuple[str, ...]  # traced services in it
    dropped: int  # handshakes dropped since the last scan


class ListenOverflows:
    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._last: dict[int, int] = {}  # netns -> counter at the last scan
        self._netns: dict[int, int] = {}  # pid -> its netns (a process keeps its namespace)

    def scan(self, processes: Iterable[ProcessInfo]) -> list[Overflows]:
        """New overflows since the last scan, in the namespaces of these processes.
        The first look at a namespace is its baseline: what overflowed before we
        watched it is not reported as new."""
        services: dict[int, set[str]] = {}
        reader: dict[int, int] = {}  # netns -> a pid in it, to read its counters
        known, self._netns = self._netns, {}
        for info in processes:
            netns = known.get(info.pid)
            if netns is None:
                try:
                    netns = os.stat(f"{self._proc}/{info.pid}/ns/net").st_ino
                except OSError:
                    continue  # gone
            self._netns[info.pid] = netns
            services.setdefault(netns, set()).add(info.service_name)
            reader.setdefault(netns, info.pid)
        found = []
        for netns, pid in reader.items():
            value = self._read(pid)
            if value is None:
                continue
            before = self._last.get(netns)
            self._last[netns] = value
            if before is not None and value > before:
                names = tuple(sorted(services[netns]))
                found.append(Overflows(netns, names, value - before))
                log.warning(
                    "listen queue overflowed %d times in the network namespace of %s "
                    "(netns %d): completed handshakes were dropped before accept(); "
                    "raise the listen backlog (and net.core.somaxconn) or accept faster",
                    value - before,
                    ", ".join(names),
                    netns,
                )
        return found

    def _read(self, pid: int) -> int | None:
        try:
            with open(f"{self._proc}/{pid}/net/netstat") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if not names.startswith("TcpExt:"):
                continue
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            value = fields.get("ListenOverflows", "")
            return int(value) if value.isascii() and value.isdigit() else None
        return None
