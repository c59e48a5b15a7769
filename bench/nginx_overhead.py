"""nginx + wrk with and without the collector, side by side in one run; prints ratios.

Two loads: `saturating` (wrk as fast as it can: the 2-core machine's CPU is
the limit, so the collector competes with nginx and wrk for it) and `paced`
(each wrk connection waits 1 ms between requests, a few thousand requests per
second that the pipeline is meant to keep up with); then both again over HTTPS
(nginx's TLS listener: plaintext from the OpenSSL uprobes). Each round runs
without the collector, with its hooks attached to programs that only count (the
floor no collector can go below, `floor.py`), and with the collector, so drift
on the machine hits all sides alike; medians are reported. The collector
exports its spans over OTLP/gRPC to a discarding sink process and serves its
metrics for Prometheus, scraped after each round: nginx's requests counted in
`http.server.request.duration` against those wrk completed (spans may be shed
or lost; RED may not). `--programs-alone` adds a side with the collector's
own programs attached and its process stopped: how much of its p99 is the
kernel side; the collector running with 1 request in 5,000 kept: its
programs at work as installed, the ring buffer read (stopped, it fills, and
each write then fails early), its user space nearly idle; and that again
beside a nice-19 process burning the CPU the collector's process used that
round: how much of the rest is its CPU share as such. Run as root: `make bench` (or
`.venv/bin/python bench/nginx_overhead.py --rounds 3 --seconds 10`).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from common import (  # also puts tests/kernel on the path
    PACED_LUA,
    drained,
    neighbour,
    null_sink,
    peak_rss_mib,
    wrk,
    wrk_arguments,
)
from floor import counting_probes, libssl_of

from harness import CollectorProcess, Nginx, free_port


def scenario(
    name: str,
    nginx: Nginx,
    tmp: Path,
    args: argparse.Namespace,
    script: Path | None,
    sink_port: int,
    https: bool = False,
    budget: str = "0",
) -> None:
    url = nginx.https_url("/index.html") if https else nginx.url("/index.html")
    base_rps, base_p99, on_rps, on_p99, cpu_per_k = [], [], [], [], []
    floor_rps, floor_p99 = [], []
    alone_rps: list[float] = []
    alone_p99: list[float] = []
    beside_rps: list[float] = []
    beside_p99: list[float] = []
    beside_cores: list[float] = []
    few_rps: list[float] = []
    few_p99: list[float] = []
    lost = rss = 0.0
    requests_traced = spans = kernel_lost = dropped = red_counted = shed = 0
    wrk(url, 2, args.connections, script)  # warm up
    for r in range(args.rounds):
        rps, p99, _ = wrk(url, args.seconds, args.connections, script)
        base_rps.append(rps)
        base_p99.append(p99)

        with counting_probes(libssl_of(nginx.proc.pid) if https else None):
            rps, p99, _ = wrk(url, args.seconds, args.connections, script)
        floor_rps.append(rps)
        floor_p99.append(p99)

        if args.programs_alone:
            rps, p99 = programs_alone(
                tmp / f"alone-{name}-{r}", url, args, script, sink_port, budget
            )
            alone_rps.append(rps)
            alone_p99.append(p99)
            rps, p99 = programs_alone(
                tmp / f"few-{name}-{r}", url, args, script, sink_port, budget, stopped=False
            )
            few_rps.append(rps)
            few_p99.append(p99)

        otlp = {"endpoint": f"127.0.0.1:{sink_port}", "insecure": True}
        prometheus_port = free_port()
        collector = CollectorProcess(
            tmp / f"collector-{name}-{r}",
            {"otlp": otlp, "prometheus": {"endpoint": f"127.0.0.1:{prometheus_port}"}},
            metrics=["prometheus"],
            # kernel counts read every 0.5 s; "0": no span budget, every request a span
            extra_env={"OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_EBPF_SPAN_BUDGET": budget},
        )
        proc = psutil.Process(collector.proc.pid)
        before, began = proc.cpu_times(), time.monotonic()
        t0 = collector.telemetry()
        rps, p99, total = wrk(url, args.seconds, args.connections, script)
        t1 = drained(collector)
        after, ended = proc.cpu_times(), time.monotonic()
        time.sleep(1.5)  # the kernel's counts of the last moments read
        red_counted += red_requests(prometheus_port, "nginx")
        rss = max(rss, peak_rss_mib(proc.pid))
        collector.stop()
        on_rps.append(rps)
        on_p99.append(p99)
        cpu = (after.user + after.system) - (before.user + before.system)
        cpu_per_k.append(cpu / total * 1000)
        if args.programs_alone:
            # The programs at work again, beside a nice-19 process burning what
            # the collector's process burned: its CPU share, apart from its work.
            cores = cpu / (ended - began)
            with neighbour(cores):
                rps, p99 = programs_alone(
                    tmp / f"beside-{name}-{r}", url, args, script, sink_port, budget, stopped=False
                )
            beside_rps.append(rps)
            beside_p99.append(p99)
            beside_cores.append(cores)
        built = t1["spans_built"] - t0["spans_built"]
        # Every request makes two spans (nginx's SERVER and wrk's CLIENT) or is shed.
        shed_now = sum(
            t1[k] - t0[k]
            for k in ("requests_shed", "requests_shed_backlog", "requests_shed_uncounted")
        )
        lost += max(0, 2 * total - built - shed_now)
        kernel_lost += t1["events_lost"] - t0["events_lost"]
        dropped += t1["spans_dropped"] - t0["spans_dropped"]
        shed += sum(
            t1[k] - t0[k]
            for k in ("requests_shed", "requests_shed_backlog", "requests_shed_uncounted")
        )
        requests_traced += total
        spans += built

    med = statistics.median
    print(
        f"{name}: nginx + wrk -c{args.connections}, {args.rounds} rounds x {args.seconds}s a side"
        f" (span budget {budget} cores per 1k requests/s; 0: none)"
    )
    print(
        f"  throughput   without {med(base_rps):10.0f} req/s   with {med(on_rps):10.0f} req/s"
        f"   ratio {med(on_rps) / med(base_rps):.3f}"
        f"   (hooks counting only: {med(floor_rps) / med(base_rps):.3f})"
    )
    p99_off, p99_on = med(base_p99) * 1e3, med(on_p99) * 1e3
    print(
        f"  p99 latency  without {p99_off:10.3f} ms      with {p99_on:10.3f} ms"
        f"      ratio {p99_on / p99_off:.3f}"
        f"   (hooks counting only: {med(floor_p99) * 1e3 / p99_off:.3f})"
    )
    # Each round's three sides, so a ratio can be read against the rounds' spread.
    by_round = ", ".join(
        f"{off * 1e3:.3f}/{hooks * 1e3:.3f}/{on * 1e3:.3f}"
        for off, hooks, on in zip(base_p99, floor_p99, on_p99, strict=True)
    )
    print(f"  p99 by round, ms (without / hooks counting only / with): {by_round}")
    if alone_rps:
        print(
            f"  the collector's programs, its process stopped: throughput ratio"
            f" {med(alone_rps) / med(base_rps):.3f}, p99 ratio"
            f" {med(alone_p99) * 1e3 / p99_off:.3f}"
        )
        print(
            f"  the collector keeping 1 request in {round(1 / FEW_KEPT)} (its programs at work,"
            f" its user space nearly idle): throughput ratio {med(few_rps) / med(base_rps):.3f},"
            f" p99 ratio {med(few_p99) * 1e3 / p99_off:.3f}"
        )
        print(
            f"  the same beside a nice-19 process burning the collector's CPU"
            f" ({med(beside_cores):.2f} cores): throughput ratio"
            f" {med(beside_rps) / med(base_rps):.3f}, p99 ratio"
            f" {med(beside_p99) * 1e3 / p99_off:.3f}"
        )
    print(f"  collector CPU per 1000 requests: {med(cpu_per_k):.3f} s")
    print(f"  collector peak RSS: {rss:.1f} MiB")
    print(
        f"  RED: {red_counted} nginx requests counted for {requests_traced} wrk completed"
        f" (ratio {red_counted / max(requests_traced, 1):.4f}; wrk leaves up to"
        f" {args.connections} a round unfinished)"
    )
    print(
        f"  spans: {spans} built for {requests_traced} requests x 2 sides, {shed} shed by the"
        f" budget; lost {int(lost)} (kernel ring buffer dropped {kernel_lost} events);"
        f" {dropped} dropped at the export queue"
    )


FEW_KEPT = 0.0002


def programs_alone(
    tmp: Path,
    url: str,
    args: argparse.Namespace,
    script: Path | None,
    sink_port: int,
    budget: str,
    stopped: bool = True,
) -> tuple[float, float]:
    """wrk's (requests/s, p99) with the collector's own programs attached and
    counting. `stopped`: its process stopped (SIGSTOP) once ready, so records it
    would read pile up until the ring buffer is full, then each write fails
    early, and the programs cost the kernel less than the collector's. Else it
    runs keeping 1 request in 5,000 (OTEL_EBPF_SPAN_PROBABILITY): its programs
    at work, the ring buffer read, and almost no user space beside them."""
    env = {"OTEL_EBPF_SPAN_BUDGET": budget}
    if not stopped:
        env["OTEL_EBPF_SPAN_PROBABILITY"] = str(FEW_KEPT)
    collector = CollectorProcess(
        tmp, {"otlp": {"endpoint": f"127.0.0.1:{sink_port}", "insecure": True}}, extra_env=env
    )
    if stopped:
        os.kill(collector.proc.pid, signal.SIGSTOP)
    try:
        rps, p99, _ = wrk(url, args.seconds, args.connections, script)
    finally:
        if stopped:
            os.kill(collector.proc.pid, signal.SIGCONT)
        collector.stop()
    return rps, p99


def red_requests(port: int, service: str) -> int:
    """`http.server.request.duration` counts of `service`, from a Prometheus scrape."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("http_server_request_duration_seconds_count{")
        and f'service_name="{service}"' in line
    )


def main() -> int:
    args = wrk_arguments(__doc__, programs_alone=True)

    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-"))
    paced = tmp / "paced.lua"
    paced.write_text(PACED_LUA)
    nginx = Nginx(tmp / "nginx")
    try:
        scenarios = {  # script, HTTPS, span budget
            "paced": (paced, False, "0"),
            "saturating": (None, False, "0"),
            # the default span budget (0.05 of a core per 1,000 requests/s)
            "paced-budget": (paced, False, "0.05"),
            "saturating-budget": (None, False, "0.05"),
            # HTTPS: the plaintext read through the OpenSSL uprobes, next to plain HTTP
            "paced-https": (paced, True, "0"),
            "saturating-https": (None, True, "0"),
            "paced-https-budget": (paced, True, "0.05"),
            "saturating-https-budget": (None, True, "0.05"),
        }
        chosen = args.only.split(",") if args.only else list(scenarios)
        with null_sink() as port:
            for name in chosen:
                script, https, budget = scenarios[name]
                scenario(name, nginx, tmp, args, script, port, https, budget)
    finally:
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
