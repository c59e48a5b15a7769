"""redis-benchmark and pgbench with and without the collector, side by side; prints ratios.

Alternates rounds without the collector, with the collector's hooks counting
only (the floor, `floor.py`), with the collector, and with a nice-19 process
burning the CPU share the collector used in that round (`neighbour.py`: what
any low-priority neighbour costs this load) (A F B N A F B N ...), and reports
medians. Spans go over OTLP/gRPC to a discarding sink in a process of its own,
as they would to a backend (a file cost the collector more: OTLP/JSON is
written through protobuf's pure-Python JSON printer); metrics to an OTLP sink,
to check the database histogram counted every command. `--budget 0.05` is the
collector as installed (the span budget: Redis commands counted and shed in the
kernel), `--budget 0` a span for each.
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
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from common import (  # also puts tests/kernel on the path
    busy_seconds,
    drained,
    neighbour,
    null_sink,
    peak_rss_mib,
)
from floor import counting_probes

from harness import CollectorProcess, Postgres, free_port, listening, wait_until
from otlp_sink import GrpcSink

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


def db_operations(sink: GrpcSink, service: str) -> int:
    """Operations in db.client.operation.duration for `service` (cumulative)."""
    series = sink.metrics.series("db.client.operation.duration", **{"service.name": service})
    return sum(int(point.value) for point in series.values())


def measured(load: Load) -> tuple[float, int, float]:
    """(operations/s, operations, the machine's busy CPU seconds per operation)."""
    before = busy_seconds()
    rate, ops = load()
    return rate, ops, (busy_seconds() - before) / ops


def scenario(
    name: str, load: Load, tmp: Path, rounds: int, budget: str, client: str, spans_port: int
) -> None:
    base, floor, traced, cpu_per_k, coverage, counted, lost = [], [], [], [], [], [], []
    node_off, node_on, beside, cores = [], [], [], []
    rss = 0.0
    load()  # warm up
    for r in range(rounds):
        rate, _, busy = measured(load)
        base.append(rate)
        node_off.append(busy)
        with counting_probes():
            floor.append(load()[0])
        sink = GrpcSink()  # each collector's cumulative counts start at zero
        slug = re.sub(r"\W+", "-", name)
        collector = CollectorProcess(
            tmp / f"collector-{slug}-{r}",
            {
                "otlp": {"endpoint": f"127.0.0.1:{sink.port}", "insecure": True},
                "otlp/spans": {"endpoint": f"127.0.0.1:{spans_port}", "insecure": True},
            },
            traces=["otlp/spans"],
            metrics=["otlp"],
            extra_env={
                "OTEL_EBPF_SPAN_BUDGET": budget,
                "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            },
        )
        proc = psutil.Process(collector.proc.pid)
        before, t0, wall = proc.cpu_times(), collector.telemetry(), time.perf_counter()
        rate, ops, busy = measured(load)
        wall = time.perf_counter() - wall
        node_on.append(busy)
        t1 = drained(collector)
        after = proc.cpu_times()
        rss = max(rss, peak_rss_mib(proc.pid))
        collector.stop()  # its last metrics go out as it stops
        sink.stop()
        counted.append(db_operations(sink, client) / ops)
        traced.append(rate)
        cpu = (after.user + after.system) - (before.user + before.system)
        cpu_per_k.append(cpu / ops * 1000)
        coverage.append((t1["spans_built"] - t0["spans_built"]) / ops)
        lost.append(t1["events_lost"] - t0["events_lost"])
        cores.append(cpu / wall)
        with neighbour(cores[-1]):  # the collector's CPU share, spent doing nothing
            beside.append(load()[0])
    med = statistics.median
    print(f"{name}: {rounds} rounds a side, span budget {budget} (0: a span for each)")
    print(
        f"  throughput  without {med(base):10.0f} ops/s   with {med(traced):10.0f} ops/s"
        f"   ratio {med(traced) / med(base):.3f}"
        f"   (hooks counting only: {med(floor) / med(base):.3f})"
    )
    print(f"  collector CPU per 1000 operations: {med(cpu_per_k):.3f} s; peak RSS {rss:.0f} MiB")
    print(
        f"  a nice-19 neighbour burning the collector's share ({med(cores):.2f} cores)"
        f" instead: ratio {med(beside) / med(base):.3f}"
    )
    print(
        f"  the machine's busy CPU per operation, while the load ran: without"
        f" {med(node_off) * 1e6:.1f} us, with {med(node_on) * 1e6:.1f} us"
        f" (x{med(node_on) / med(node_off):.2f})"
    )
    print(
        f"  spans built per operation: {med(coverage):.3f}; operations in"
        f" db.client.operation.duration per operation: {med(counted):.4f};"
        f" kernel events dropped: {med(lost):.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--redis-requests", type=int, default=20000)
    parser.add_argument("--budget", default="0.05", help="OTEL_EBPF_SPAN_BUDGET (0: none)")
    parser.add_argument("--only", choices=("redis", "pgbench"), help="one of the two")
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
        with null_sink() as spans_port:
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
            if args.only != "pgbench":
                scenario(
                    "redis-benchmark -c4 -t set,get",
                    redis_load(port, args.redis_requests),
                    tmp,
                    args.rounds,
                    args.budget,
                    "redis-benchmark",
                    spans_port,
                )
            if args.only == "redis":
                return 0
            for name, load in (
                ("pgbench -c2 (TPC-B-like)", pgbench_load(pg, args.seconds)),
                (
                    "pgbench -c2 -R 300 (paced, 2100 statements/s)",
                    pgbench_load(pg, args.seconds, rate=300),
                ),
            ):
                scenario(name, load, tmp, args.rounds, args.budget, "pgbench", spans_port)
    finally:
        redis.terminate()
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
