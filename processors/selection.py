"""Which connections to trace: by pid, executable glob, server port, and (a sidecar)
the pod.

Names follow OpenTelemetry eBPF Instrumentation where it has the concept
(OTEL_EBPF_OPEN_PORT, OTEL_EBPF_AUTO_TARGET_EXE). Decided once per connection.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field


def parse_ports(spec: str) -> list[tuple[int, int]]:
    """'80,443,8000-8999' -> [(80, 80), (443, 443), (8000, 8999)]; ValueError if bad."""
    ranges: list[tuple[int, int]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        low, sep, high = part.partition("-")
        lo, hi = int(low), int(high) if sep else int(low)
        if not (0 < lo <= hi <= 65535):
            raise ValueError(f"bad port range {part!r}")
        ranges.append((lo, hi))
    return ranges


@dataclass(frozen=True)
class Selector:
    include_pids: frozenset[int] = frozenset()
    exclude_pids: frozenset[int] = frozenset()
    include_executables: tuple[str, ...] = ()
    exclude_executables: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    scope: Callable[[int], bool] | None = None  # a sidecar's pod (None: the whole node)
    _cache: dict[tuple[int, str], bool] = field(default_factory=dict, compare=False, repr=False)

    def process_selected(self, pid: int, executable: str) -> bool:
        key = (pid, executable)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._process_selected(pid, executable)
        return hit

    def _process_selected(self, pid: int, executable: str) -> bool:
        if self.scope is not None and not self.scope(pid):
            return False
        if pid in self.exclude_pids:
            return False
        if any(fnmatch.fnmatchcase(executable, g) for g in self.exclude_executables):
            return False
        if not self.include_pids and not self.include_executables:
            return True
        return pid in self.include_pids or any(
            fnmatch.fnmatchcase(executable, g) for g in self.include_executables
        )

    def port_selected(self, server_port: int) -> bool:
        """The server side's port: our own for a server, the peer's for a client."""
        return not self.ports or any(lo <= server_port <= hi for lo, hi in self.ports)
