"""The kernel side's cost per request: how long the collector's eBPF programs run
inside the traced threads, read from the kernel's own accounting.

The throughput ratios of the other benches mix the programs' cost with the
collector's user space and the machine's noise; this reads the time itself.
With `kernel.bpf_stats_enabled` on for the run (and put back after), the kernel
adds up each program's run time and runs. nginx (keep-alive) is driven by wrk
for `--seconds` a round with, in turn, the floor's counting programs
(`floor.py`), the collector as installed (span budget on) and with a span for
every request; each side's programs are those it loaded, told apart from the
node's by their ids. Prints, per side, the nanoseconds of eBPF a request
(medians of the rounds) and, for its costliest programs (by the kernel's
15-character names), the runs a request and the nanoseconds a run. The
accounting itself adds two clock reads a run, to every side alike.
Run as root: `.venv/bin/python bench/bpf_cost.py [--rounds 3 --seconds 8]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from common import null_sink, with_collector, wrk  # also puts tests/kernel/ on the path
from floor import counting_probes

from harness import Nginx

# struct bpf_prog_info (uapi/linux/bpf.h): name at 64, run_time_ns and run_cnt at 192
_INFO_SIZE = 256
_NAME = slice(64, 80)
_RUN = struct.Struct("<QQ")
_RUN_AT = 192

# program id -> (name, run time ns, runs)
Stats = dict[int, tuple[str, int, int]]


def program_stats() -> Stats:
    """Every loaded program's name, run time and runs, by id."""
    lib = ctypes.CDLL("libbcc.so.0", use_errno=True)
    found: Stats = {}
    current, following = ctypes.c_uint32(0), ctypes.c_uint32(0)
    while lib.bpf_prog_get_next_id(current.value, ctypes.byref(following)) == 0:
        current.value = following.value
        fd = lib.bpf_prog_get_fd_by_id(current.value)
        if fd < 0:
            continue  # unloaded meanwhile
        try:
            info = ctypes.create_string_buffer(_INFO_SIZE)
            size = ctypes.c_uint32(_INFO_SIZE)
            if lib.bpf_obj_get_info(fd, info, ctypes.byref(size)) == 0:
                name = info.raw[_NAME].split(b"\0")[0].decode(errors="replace")
                run_ns, runs = _RUN.unpack_from(info.raw, _RUN_AT)
                found[current.value] = (name, run_ns, runs)
        finally:
            os.close(fd)
    return found


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """The kernel's run-time accounting on while the block runs, as it was after."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = knob.read_text().strip()
    knob.write_text("1")
    try:
        yield
    finally:
        knob.write_text(before)


def measure(url: str, seconds: int, known: set[int]) -> tuple[int, dict[str, tuple[int, int]]]:
    """wrk's requests, and the time and runs of each program not in `known`, by name."""
    before = program_stats()
    _, _, requests = wrk(url, seconds, 4)
    after = program_stats()
    by_name: dict[str, tuple[int, int]] = {}
    for pid, (name, run_ns, runs) in after.items():
        if pid in known or pid not in before:
            continue
        spent, count = by_name.get(name, (0, 0))
        by_name[name] = (spent + run_ns - before[pid][1], count + runs - before[pid][2])
    return requests, by_name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-bpf-cost-"))
    nginx = Nginx(tmp / "nginx")
    url = nginx.url("/index.html")
    programs = tmp / "programs"
    per_request: dict[str, list[float]] = {}
    top: dict[str, dict[str, tuple[int, int, int]]] = {}  # side -> name -> (ns, runs, requests)
    try:
        with null_sink() as port, bpf_stats():
            exporters = {"otlp": {"endpoint": f"127.0.0.1:{port}", "insecure": True}}
            cache = {"OTEL_EBPF_PROGRAM_CACHE": str(programs)}
            sides: dict[str, Callable[[], contextlib.AbstractContextManager[object]]] = {
                "hooks counting only": counting_probes,
                "collector as installed": with_collector(
                    tmp / "installed", exporters, {**cache, "OTEL_EBPF_SPAN_BUDGET": "0.05"}
                ),
                "collector, a span per request": with_collector(
                    tmp / "every-span", exporters, {**cache, "OTEL_EBPF_SPAN_BUDGET": "0"}
                ),
            }
            for _ in range(args.rounds):
                for side, setting in sides.items():
                    known = set(program_stats())
                    with setting():
                        requests, by_name = measure(url, args.seconds, known)
                    spent = sum(ns for ns, _ in by_name.values())
                    per_request.setdefault(side, []).append(spent / max(requests, 1))
                    kept = top.setdefault(side, {})
                    for name, (ns, runs) in by_name.items():
                        total_ns, total_runs, total_requests = kept.get(name, (0, 0, 0))
                        kept[name] = (total_ns + ns, total_runs + runs, total_requests + requests)
    finally:
        nginx.stop()
    for side, values in per_request.items():
        print(
            f"{side}: {statistics.median(values):,.0f} ns of eBPF a request"
            f" (rounds: {', '.join(f'{v:,.0f}' for v in values)})"
        )
        costliest = sorted(top[side].items(), key=lambda item: -item[1][0])[:6]
        for name, (ns, runs, requests) in costliest:
            print(
                f"  {name:<16} {runs / requests:5.1f} runs a request, {ns / max(runs, 1):6,.0f} ns"
                f" a run, {ns / requests:6,.0f} ns a request"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
