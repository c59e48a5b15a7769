"""A limit on the collector's resident memory, as the OpenTelemetry Collector's
memory_limiter processor has it.

Apps' OTLP requests are the one input whose size the collector does not
choose: a burst of large ones (each up to the receiver's 4 MiB) is decoded
into spans several times its size, and bounds that count spans cannot see
that. Past the cgroup's limit the kernel kills the collector, and everything
it held is lost. So above the soft limit (the limit less its spike
allowance) a request is answered "retry later" before it is decoded: the
app's SDK keeps its spans and sends them again. The eBPF side is not
refused: its spans are few bytes each and bounded by count, and its metrics
count every request.

Python and glibc keep freed memory for reuse, so after a burst the resident
size can stay above the soft limit with nothing held. Above it, the C heaps
are trimmed before the size is believed, and above the limit itself the
cycle collector runs too, each at most once a second.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from otel_ebpf.config import (
    DEFAULT_LIMIT_PERCENTAGE,
    DEFAULT_SPIKE_PERCENTAGE,
    MemoryLimiterConfig,
)
from otel_ebpf.memory import trim_heap

MIB: Final = 1 << 20
RECLAIM_EVERY_S: Final = 1.0  # heap trims (and collections over the limit) at most this often
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(statm: str = "/proc/self/statm") -> int:
    """This process's resident set size (statm's second field, in pages)."""
    with open(statm, "rb") as f:
        return int(f.read().split()[1]) * _PAGE_SIZE


def cgroup_memory_limit(
    self_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> int | None:
    """The tightest memory limit on the cgroup this process runs in and its
    ancestors (v2 `memory.max`, v1 `memory.limit_in_bytes`); None without one.
    Inside a container's cgroup namespace its own cgroup is the mount's root."""
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if not path.startswith("/"):
            continue
        if controllers == "":  # v2's unified hierarchy
            base, name = Path(root), "memory.max"
        elif "memory" in controllers.split(","):
            base, name = Path(root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = base / path.lstrip("/")
        candidates += [d / name for d in (here, *here.parents) if d.is_relative_to(base)]
    limits = [n for n in map(_limit_in, candidates) if n is not None]
    return min(limits) if limits else None


def _limit_in(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max": no limit here
        return None
    value = int(text)
    # cgroup v1 writes "no limit" as the largest page-aligned number
    return value if value < 1 << 62 else None


def physical_memory() -> int:
    return int(os.sysconf("SC_PHYS_PAGES")) * _PAGE_SIZE


class MemoryLimiter:
    """Answers whether a request may be taken now. `refusal()` is called on the
    receiver threads before each request is decoded; it reads the resident size
    at most every `check_interval_s` and is otherwise a comparison."""

    def __init__(
        self,
        limit: int,
        spike: int,
        check_interval_s: float,
        resident: Callable[[], int] = resident_bytes,
        reclaim: Callable[[bool], None] | None = None,
        basis: str = "limit_mib",
    ) -> None:
        if not 0 <= spike < limit:
            raise ValueError("the spike allowance must be below the limit")
        self.limit = limit
        self.basis = basis  # where the limit came from, for the log
        self.soft_limit = limit - spike
        self._interval = check_interval_s
        self._resident = resident
        self._reclaim = reclaim or _reclaim
        self.resident = resident()  # as last read
        self._next_read = float("-inf")
        self._next_reclaim = float("-inf")
        self._reading = threading.Lock()

    @classmethod
    def from_config(
        cls,
        config: MemoryLimiterConfig,
        available: Callable[[], int | None] = cgroup_memory_limit,
        resident: Callable[[], int] = resident_bytes,
    ) -> MemoryLimiter:
        """The limits in MiB as given, or as percentages of the cgroup's limit
        (the machine's memory where there is none), as the Collector's."""
        if config.limit_mib is not None:
            limit = config.limit_mib * MIB
            spike = (config.spike_limit_mib or 0) * MIB or limit // 5
            basis = "limit_mib"
        else:
            cgroup = available()
            total = cgroup or physical_memory()
            percent = config.limit_percentage or DEFAULT_LIMIT_PERCENTAGE
            limit = total * percent // 100
            whose = "the cgroup's limit" if cgroup else "the machine's memory"
            basis = f"{percent} % of {whose}, {total // MIB} MiB"
            spike_percent = config.spike_limit_percentage or DEFAULT_SPIKE_PERCENTAGE
            spike = total * spike_percent // 100
            if spike >= limit:  # the default spike over a small percentage given
                spike = limit // 5
        return cls(limit, spike, config.check_interval, resident, basis=basis)

    @property
    def over_soft_limit(self) -> bool:
        return self.resident > self.soft_limit

    def refusal(self) -> str | None:
        """None while the resident size is at or below the soft limit, else why not."""
        now = time.monotonic()
        if now >= self._next_read and self._reading.acquire(blocking=False):
            try:  # one thread reads; the others take the size as last read
                self._read(now)
            finally:
                self._reading.release()
        if self.resident <= self.soft_limit:
            return None
        return (
            f"the collector's memory ({self.resident // MIB} MiB) is above its soft limit "
            f"({self.soft_limit // MIB} MiB): retry later"
        )

    def _read(self, now: float) -> None:
        self._next_read = now + self._interval
        resident = self._resident()
        if resident > self.soft_limit and now >= self._next_reclaim:
            # freed memory the heaps keep counts as resident until given back
            self._next_reclaim = now + RECLAIM_EVERY_S
            self._reclaim(resident > self.limit)
            resident = self._resident()
        self.resident = resident


def _reclaim(over_limit: bool) -> None:
    if over_limit:
        gc.collect()
    trim_heap()
