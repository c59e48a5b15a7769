"""Collector CPU per 1,000 connections/s and per 1,000 requests/s: metrics only vs
metrics + spans, next to no collector, side by side in one run; prints ratios.

nginx driven by wrk at a paced rate the pipeline keeps up with (each wrk
connection waits 1 ms between requests): `requests` reuses keep-alive
connections, `connections` sends `Connection: close` so every request is a new
TCP connection. Every mode exports OTLP/gRPC to a sink process that discards.
"metrics" has no traces pipeline and its budget as installed (the metrics-only
default: the kernel counts RED; spans, never exported, are built for the
graph's server side and the split within 0.005 cores per 1,000 requests/s
each end);
"metrics-all" the same with --span-budget (0: every request read);
"metrics+spans" exports spans with --span-budget. Rounds alternate none /
metrics / metrics-all / metrics+spans; medians.
Run as root: `.venv/bin/python bench/metrics_cost.py [--rounds 2 --seconds 8]
[--only requests|connections] [--span-budget 0.05]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import psutil
from common import (  # also puts tests/kernel on the path
    PACED_LUA,
    drained,
    null_sink,
    peak_rss_mib,
    wrk,
    wrk_arguments,
)

from harness import CollectorProcess, Nginx

MODES = ("metrics", "metrics-all", "metrics+spans")


def collector(tmp: Path, mode: str, sink_port: int, budget: str) -> CollectorProcess:
    otlp = {"endpoint": f"127.0.0.1:{sink_port}", "insecure": True}
    return CollectorProcess(
        tmp,
        {"otlp": otlp},
        extra_env={
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_EBPF_SPAN_BUDGET": None if mode == "metrics" else budget,
        },
        metrics=["otlp"],
        traces=["otlp"] if mode == "metrics+spans" else [],
    )


def scenario(load: str, nginx: Nginx, tmp: Path, args: argparse.Namespace, sink_port: int) -> None:
    url = nginx.url("/index.html")
    headers = ("Connection: close",) if load == "connections" else ()
    script = tmp / "paced.lua"
    rate: dict[str, list[float]] = {m: [] for m in ("none", *MODES)}
    cpu_per_k: dict[str, list[float]] = {m: [] for m in MODES}
    rss: dict[str, float] = dict.fromkeys(MODES, 0.0)
    lost: dict[str, int] = dict.fromkeys(MODES, 0)
    read: dict[str, list[float]] = {m: [] for m in MODES}  # spans built per request end
    wrk(url, 2, args.connections, script, headers)  # warm up
    for r in range(args.rounds):
        rate["none"].append(wrk(url, args.seconds, args.connections, script, headers)[0])
        for mode in MODES:
            c = collector(tmp / f"collector-{load}-{mode}-{r}", mode, sink_port, args.span_budget)
            proc = psutil.Process(c.proc.pid)
            t0, before = c.telemetry(), proc.cpu_times()
            rps, _, total = wrk(url, args.seconds, args.connections, script, headers)
            t1, after = drained(c), proc.cpu_times()
            rss[mode] = max(rss[mode], peak_rss_mib(proc.pid))
            c.stop()
            cpu = (after.user + after.system) - (before.user + before.system)
            rate[mode].append(rps)
            cpu_per_k[mode].append(cpu / total * 1000)
            lost[mode] += t1["events_lost"] - t0["events_lost"]
            read[mode].append((t1["spans_built"] - t0["spans_built"]) / (2 * total))
    med = statistics.median
    unit = "connections" if load == "connections" else "requests"
    print(
        f"{load}: nginx + wrk -c{args.connections} paced, {args.rounds} rounds x {args.seconds}s,"
        f" span budget {args.span_budget} (0: every request a span; metrics: as installed)"
    )
    print(f"  no collector     {med(rate['none']):8.0f} {unit}/s")
    for mode in MODES:
        ratio = med(rate[mode]) / med(rate["none"])
        print(
            f"  {mode:<16} {med(rate[mode]):8.0f} {unit}/s  ratio {ratio:.3f}"
            f"  collector CPU {med(cpu_per_k[mode]):.3f} s per 1,000 {unit}"
            f"  spans built {med(read[mode]):.3f} per end"
            f"  peak RSS {rss[mode]:.0f} MiB  kernel dropped {lost[mode]} events"
        )
    spans = med(cpu_per_k["metrics+spans"]) / med(cpu_per_k["metrics-all"])
    print(f"  metrics + spans take {spans:.2f}x the CPU of metrics-all")


def main() -> int:
    args = wrk_arguments(__doc__, span_budget=True)
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-metrics-"))
    (tmp / "paced.lua").write_text(PACED_LUA)
    nginx = Nginx(tmp / "nginx")
    try:
        with null_sink() as sink_port:
            for load in ("requests", "connections"):
                if not args.only or load in args.only.split(","):
                    scenario(load, nginx, tmp, args, sink_port)
    finally:
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
