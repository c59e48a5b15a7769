"""What continuous CPU profiling costs: a CPU-bound program's work rate with the
profiler off and on, side by side in alternating rounds (medians), and the
collector's own CPU per second of profiling.

The program is the profiling test's C program (tests/kernel/profiled/cpu_shares.c:
one thread, all CPU, rounds of three functions); "on" is `otel-ebpf run` with only
a profiles pipeline (pprof files), at the default 49 Hz and at 199 Hz.
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
receivers: {{profiling: {{frequency: {hz}, interval: 10s}}}}
exporters: {{pprof: {{directory: {dir}}}}}
extensions: {{health_check: {{endpoint: "127.0.0.1:{port}"}}}}
service:
  extensions: [health_check]
  pipelines: {{profiles: {{receivers: [profiling], exporters: [pprof]}}}}
"""


def rounds_per_second(binary: Path, seconds: float) -> float:
    out = subprocess.run([str(binary), str(seconds)], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["rounds"]) / seconds


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-profiling-"))
    binary = build_cpu_shares(tmp)
    sides = {"off": 0, "49 Hz": 49, "199 Hz": 199}
    rates: dict[str, list[float]] = {s: [] for s in sides}
    collector_cpu: dict[str, list[float]] = {s: [] for s in sides if sides[s]}
    for n in range(args.rounds):
        for side, hz in sides.items():
            if not hz:
                rates[side].append(rounds_per_second(binary, args.seconds))
                continue
            port = free_port()
            config = tmp / f"c-{n}-{hz}.yaml"
            config.write_text(CONFIG.format(hz=hz, dir=tmp / f"pprof-{n}-{hz}", port=port))
            proc = subprocess.Popen(
                [OTEL_EBPF, "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_until(lambda port=port: health(port)[0] == 200, 60, "collector healthy")
                time.sleep(WARM_UP_S)  # its first reads load the node's binaries' symbols
                before = cpu_seconds(proc.pid)
                began = time.monotonic()
                rates[side].append(rounds_per_second(binary, args.seconds))
                elapsed = time.monotonic() - began
                collector_cpu[side].append((cpu_seconds(proc.pid) - before) / elapsed)
            finally:
                end_process(proc)
        print(
            f"round {n + 1}: " + ", ".join(f"{s} {rates[s][-1]:.1f}/s" for s in sides), flush=True
        )
    base = statistics.median(rates["off"])
    print(
        f"\ncpu_shares rounds/s, median of {args.rounds} alternating rounds of {args.seconds:g} s:"
    )
    print("| profiler | work rate | ratio to off | collector CPU (cores) |")
    print("|---|---|---|---|")
    for side in sides:
        rate = statistics.median(rates[side])
        cpu = f"{statistics.median(collector_cpu[side]):.4f}" if side in collector_cpu else "-"
        print(f"| {side} | {rate:.1f}/s | {rate / base:.4f} | {cpu} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
