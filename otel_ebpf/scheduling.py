"""The collector's scheduling: below the programs it traces, on the CPUs it is given."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

# The live threads given their names, by native id: the thread itself is kept
# too, as an ended thread's id is soon another's (pid_max can be 32,768).
_named: dict[int, threading.Thread] = {}


def name_threads() -> None:
    """Each thread's name where the kernel shows it (`top -H`, `ps -L`,
    /proc/PID/task/TID/comm), so a thread's CPU is told apart: span-export,
    otlp-grpc_0, health... (Python names them only for itself). A thread is
    named once; the first 15 bytes of its name are kept, as the kernel keeps
    them. The main thread keeps the program's name."""
    main = threading.main_thread()
    live = {t.native_id: t for t in threading.enumerate() if t is not main and t.native_id}
    for tid in [tid for tid in _named if tid not in live]:  # ended: forgotten
        del _named[tid]
    for tid, thread in live.items():
        if _named.get(tid) is thread:
            continue
        _named[tid] = thread
        try:
            with open(f"/proc/self/task/{tid}/comm", "wb") as comm:
                comm.write(thread.name.encode("utf-8", "replace")[:15])
        except OSError:  # ended since the listing
            continue


def set_priority(nice: int) -> None:
    """Every thread of this process to `nice` (Linux keeps it per thread, and a
    new thread takes its creator's). A refusal (a raise without CAP_SYS_NICE)
    is said and the collector runs as it is."""
    try:
        for tid in _threads():
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.warning("scheduling priority not set to nice %d: %s", nice, exc.strerror)
        return
    log.info("scheduling priority: nice %d (the traced programs preempt the collector)", nice)


def _threads() -> list[int]:
    """This process's threads (Linux keeps priority and affinity per thread)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]  # this thread


def parse_cpu_list(spec: str) -> frozenset[int]:
    """'0-1,3' -> {0, 1, 3} (the kernel's CPU list format, as taskset -c and
    cpusets write it); ValueError if malformed."""
    cpus: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise ValueError(f"bad CPU list {spec!r}: {part!r} is not a CPU or a range") from None
        if not 0 <= first <= last < 4096:
            raise ValueError(f"bad CPU list {spec!r}: {part!r} is not a CPU or a range")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError(f"bad CPU list {spec!r}: no CPU named")
    return frozenset(cpus)


def pin(cpus: frozenset[int]) -> None:
    """Every thread of this process to `cpus` (threads started later inherit it).
    ValueError when one of them is not a CPU this process may use (its cpuset)."""
    allowed = os.sched_getaffinity(0)
    outside = sorted(cpus - allowed)
    if outside:
        raise ValueError(
            f"{format_cpu_list(outside)}: not among the CPUs this process may use "
            f"({format_cpu_list(sorted(allowed))})"
        )
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended since the listing
            continue
    log.info("CPU affinity: the collector runs on CPUs %s", format_cpu_list(sorted(cpus)))


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 3] -> '0-1,3'."""
    parts: list[str] = []
    start = previous = cpus[0]
    for cpu in [*cpus[1:], -1]:
        if cpu != previous + 1:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = cpu
        previous = cpu
    return ",".join(parts)
