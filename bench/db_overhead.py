"""redis-benchmark and pgbench with and without the collector, side by side; prints ratios.

Alternates baseline and traced rounds (A B A B ...) and reports medians. The
collector writes spans to a file (no export cost differences between rounds).
Run as root: `make bench` (or `.venv/bin/python bench/db_overhead.py --rounds 3`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil
from common import drained, peak_rss_mib  # also puts tests/kernel on the path

from harness import CollectorProcess, Postgres, free_port, listening, wait_until

Load = Callable[[], tuple[float, int]]  # -> (operations per second, operations)


def redis_load(port: int, requests: int) -> Load:
    def run() -> tuple[float, int]:
        out = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(port),
                "-n",
                str(requests),
                "-c",
                "4",
                "-t",
                "set,get",
                "-q",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rates = [float(x) for x in re.findall(r"([\d.]+) requests per second", out)]
        return statistics.mean(rates), 2 * requests

    return run


def pgbench_load(pg: Postgres, seconds: int, rate: int | None = None) -> Load:
    base = [str(Postgres.BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres"]

    def run() -> tuple[float, int]:
        out = subprocess.run(
            [*base, "-c", "2", "-j", "2", "-T", str(seconds), "-n", "postgres"]
            + (["-R", str(rate)] if rate else []),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        done = int(re.search(r"transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
        return tps * 7, done * 7  # seven statements per TPC-B-like transaction

    return run


def scenario(name: str, load: Load, tmp: Path, rounds: int) -> None:
    base, traced, cpu_per_k, coverage, lost = [], [], [], [], []
    rss = 0.0
    load()  # warm up
    for r in range(rounds):
        base.append(load()[0])
        slug = re.sub(r"\W+", "-", name)
        out = tmp / f"spans-{slug}-{r}.jsonl"
        collector = CollectorProcess(tmp / f"collector-{slug}-{r}", {"file": {"path": str(out)}})
        proc = psutil.Process(collector.proc.pid)
        before, t0 = proc.cpu_times(), collector.telemetry()
        rate, ops = load()
        t1 = drained(collector)
        after = proc.cpu_times()
        rss = max(rss, peak_rss_mib(proc.pid))
        collector.stop()
        out.unlink(missing_ok=True)
        traced.append(rate)
        cpu = (after.user + after.system) - (before.user + before.system)
        cpu_per_k.append(cpu / ops * 1000)
        coverage.append((t1["spans_built"] - t0["spans_built"]) / ops)
        lost.append(t1["events_lost"] - t0["events_lost"])
    med = statistics.median
    print(f"{name}: {rounds} rounds a side")
    print(
        f"  throughput  without {med(base):10.0f} ops/s   with {med(traced):10.0f} ops/s"
        f"   ratio {med(traced) / med(base):.3f}"
    )
    print(f"  collector CPU per 1000 operations: {med(cpu_per_k):.3f} s; peak RSS {rss:.0f} MiB")
    print(
        f"  spans built per operation: {med(coverage):.3f} (1.0 when nothing is lost);"
        f" kernel events dropped: {med(lost):.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--redis-requests", type=int, default=20000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-db-"))
    port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    pg = Postgres(tmp / "pg")
    try:
        wait_until(lambda: listening(port), 10, "redis listening")
        subprocess.run(
            [
                str(Postgres.BIN / "pgbench"),
                "-h",
                "127.0.0.1",
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                "-i",
                "-q",
                "postgres",
            ],
            check=True,
            capture_output=True,
        )
        scenario(
            "redis-benchmark -c4 -t set,get",
            redis_load(port, args.redis_requests),
            tmp,
            args.rounds,
        )
        scenario("pgbench -c2 (TPC-B-like)", pgbench_load(pg, args.seconds), tmp, args.rounds)
        paced = pgbench_load(pg, args.seconds, rate=300)
        scenario("pgbench -c2 -R 300 (paced, 2100 statements/s)", paced, tmp, args.rounds)
    finally:
        redis.terminate()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
