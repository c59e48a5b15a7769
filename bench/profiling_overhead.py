"""What continuous profiling costs: programs' work rate with the profiler off and
on, side by side in alternating rounds (medians), and the collector's own CPU.

Two programs: the profiling test's CPU-bound C program (tests/kernel/profiled/
cpu_shares.c: one thread, all CPU) and bench/pingpong.c (two processes passing a
byte over pipes: two context switches per round trip, where off-CPU profiling,
a probe on every switch, costs the most). Both run pinned to CPU 1. "On" is
`otel-ebpf run` with only a profiles pipeline (pprof files): at the default
49 Hz, at 199 Hz, and at 49 Hz with off-CPU time.
Run as root: `.venv/bin/python bench/profiling_overhead.py [--rounds 3 --seconds 8]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from common import end_process, free_port, wait_until  # also puts tests/kernel/ on the path

from harness import OTEL_EBPF, build_cpu_shares, health

WARM_UP_S = 5.0
CONFIG = """
receivers: {{profiling: {{frequency: {hz}, interval: 10s, off_cpu: {off_cpu}}}}}
exporters: {{pprof: {{directory: {dir}}}}}
extensions: {{health_check: {{endpoint: "127.0.0.1:{port}"}}}}
service:
  extensions: [health_check]
  pipelines: {{profiles: {{receivers: [profiling], exporters: [pprof]}}}}
"""
SIDES = {"off": None, "49 Hz": (49, False), "199 Hz": (199, False), "49 Hz + off-CPU": (49, True)}


def rounds_per_second(binary: Path, seconds: float) -> float:
    """Pinned to one CPU: the scheduler's placement (two processes on one CPU or
    two) moved pingpong's rate by 2x between runs; pinned, it varies by ~3 %."""
    out = subprocess.run(
        ["taskset", "-c", "1", str(binary), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout)["rounds"]) / seconds


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def measure(
    binary: Path, seconds: float, side: tuple[int, bool] | None, tmp: Path
) -> tuple[float, float]:
    """(the program's rounds per second, the collector's cores) for one side."""
    if side is None:
        return rounds_per_second(binary, seconds), 0.0
    hz, off_cpu = side
    port = free_port()
    config = tmp / f"c-{port}.yaml"
    config.write_text(
        CONFIG.format(hz=hz, off_cpu=str(off_cpu).lower(), dir=tmp / f"pprof-{port}", port=port)
    )
    proc = subprocess.Popen(
        [OTEL_EBPF, "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: health(port)[0] == 200, 60, "collector healthy")
        time.sleep(WARM_UP_S)  # its first reads load the node's binaries' symbols
        before, began = cpu_seconds(proc.pid), time.monotonic()
        rate = rounds_per_second(binary, seconds)
        return rate, (cpu_seconds(proc.pid) - before) / (time.monotonic() - began)
    finally:
        end_process(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-profiling-"))
    pingpong = tmp / "pingpong"
    source = Path(__file__).with_name("pingpong.c")
    subprocess.run(["gcc", "-O2", "-o", str(pingpong), str(source)], check=True)
    programs = {"cpu_shares (CPU-bound)": build_cpu_shares(tmp), "pingpong (switches)": pingpong}
    rates: dict[tuple[str, str], list[float]] = {(p, s): [] for p in programs for s in SIDES}
    cores: dict[tuple[str, str], list[float]] = {(p, s): [] for p in programs for s in SIDES}
    for n in range(args.rounds):
        for program, binary in programs.items():
            for side, setting in SIDES.items():
                rate, used = measure(binary, args.seconds, setting, tmp)
                rates[(program, side)].append(rate)
                cores[(program, side)].append(used)
        print(f"round {n + 1} done", flush=True)
    print(f"\nmedians of {args.rounds} alternating rounds of {args.seconds:g} s:")
    print("| program | profiler | work rate | ratio to off | collector CPU (cores) |")
    print("|---|---|---|---|---|")
    for program in programs:
        base = statistics.median(rates[(program, "off")])
        for side, setting in SIDES.items():
            rate = statistics.median(rates[(program, side)])
            used = f"{statistics.median(cores[(program, side)]):.4f}" if setting else "-"
            print(f"| {program} | {side} | {rate:,.1f}/s | {rate / base:.4f} | {used} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
