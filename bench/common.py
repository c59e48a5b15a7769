"""What the overhead benchmarks share: the wrk driver, the collector's telemetry, memory."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kernel"))
from harness import Chain, CollectorProcess, end_process, free_port, listening, wait_until


def drained(collector: CollectorProcess) -> dict[str, int]:
    """Telemetry once the pipeline has caught up: spans built and events lost still
    for a second, events received all but still (the event counters move only
    between ring-buffer polls, and one poll can take seconds through a backlog)."""
    last = collector.telemetry()
    for _ in range(120):
        time.sleep(1.0)
        now = collector.telemetry()
        if (
            now["spans_built"] == last["spans_built"]
            and now["events_lost"] == last["events_lost"]
            and now["events_received"] - last["events_received"] < 50  # our own polling
        ):
            return now
        last = now
    return last


@contextlib.contextmanager
def null_sink() -> Iterator[int]:
    """An OTLP/gRPC receiver that discards, in a process of its own (its CPU is not
    the collector's); yields its port."""
    port = free_port()
    sink = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "otlp_null_sink.py"), str(port)]
    )
    try:
        wait_until(lambda: listening(port), 10, "OTLP sink listening")
        yield port
    finally:
        end_process(sink)


@contextlib.contextmanager
def neighbour(cores: float) -> Iterator[None]:
    """A nice-19 process burning `cores` of one CPU (neighbour.py) while the block runs."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "neighbour.py"), f"{cores:.4f}"]
    )
    try:
        yield
    finally:
        end_process(proc)


@contextlib.contextmanager
def every_cpu_busy() -> Iterator[None]:
    """A nice-0 spinner on each CPU this process may use while the block runs:
    a node at full load."""
    spin = [sys.executable, "-c", "while True: pass"]
    procs = [subprocess.Popen(spin) for _ in os.sched_getaffinity(0)]
    try:
        yield
    finally:
        for proc in procs:
            end_process(proc)


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (every process, the kernel's too)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


PACED_LUA = "function delay()\n  return 1\nend\n"  # milliseconds between requests


def wrk(
    url: str,
    seconds: int,
    connections: int,
    script: Path | None = None,
    headers: tuple[str, ...] = (),
) -> tuple[float, float, int]:
    """(requests/s, p99 latency in seconds, completed requests)."""
    extra = ["-s", str(script)] if script else []
    for header in headers:
        extra += ["-H", header]
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, float(value) * _UNITS[unit], total


def wrk_arguments(
    description: str | None, span_budget: bool = False, programs_alone: bool = False
) -> argparse.Namespace:
    """--rounds, --seconds and --connections of the benches that drive wrk (and
    --span-budget, for those that run one collector setting throughout;
    --programs-alone, for those that can add the collector's programs without
    its user space as a side)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated scenario names to run")
    if programs_alone:
        parser.add_argument(
            "--programs-alone",
            action="store_true",
            help="add sides: the collector's own programs attached, its process stopped;"
            " the same beside a nice-19 process burning the CPU its process used;"
            " the collector keeping 1 request in 5,000",
        )
    if span_budget:
        parser.add_argument(
            "--span-budget",
            default="0",
            help="the collector's OTEL_EBPF_SPAN_BUDGET (0: every request a span; "
            "0.05: as installed)",
        )
    return parser.parse_args()


# A setting of a chain bench: what runs beside the chain while wrk drives it.
Setting = Callable[[], contextlib.AbstractContextManager[object]]


def compare_on_chain(
    title: str,
    chain: Chain,
    settings: dict[str, Setting],
    args: argparse.Namespace,
) -> None:
    """wrk on the chain's first hop under each setting in turn, `args.rounds`
    alternating rounds; prints the medians of throughput, p99 and the chain's own
    CPU per request (probes run in its threads), as ratios to the first setting."""
    hops = [psutil.Process(p.pid) for p in chain.procs]
    url = f"http://127.0.0.1:{chain.port}/bench"
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in settings}
    wrk(url, 2, args.connections)  # warm up
    for _ in range(args.rounds):
        for name, setting in settings.items():
            with setting():
                wrk(url, 1, 1)  # a collector sees the chain and probes it
                before = sum(sum(h.cpu_times()[:2]) for h in hops)
                rps, p99, done = wrk(url, args.seconds, args.connections)
                cpu = sum(sum(h.cpu_times()[:2]) for h in hops) - before
            results[name].append((rps, p99, cpu / done * 1e6))
    med = statistics.median
    base_rps = med(r[0] for r in next(iter(results.values())))
    print(f"{title}, wrk -c{args.connections}, {args.rounds} rounds, medians")
    print(f"{'':36} {'req/s':>8} {'ratio':>6} {'p99 ms':>7} {'chain CPU per request':>22}")
    for name, rows in results.items():
        rps, p99, cpu = (med(r[i] for r in rows) for i in range(3))
        print(f"{name:36} {rps:8.0f} {rps / base_rps:6.3f} {p99 * 1e3:7.2f} {cpu:19.1f} us")


def with_collector(where: Path, exporters: dict[str, Any], env: dict[str, str]) -> Setting:
    """A setting: the collector runs, with `env`."""

    @contextlib.contextmanager
    def run() -> Iterator[object]:
        collector = CollectorProcess(where, exporters, extra_env=env)
        try:
            yield collector
        finally:
            collector.stop()

    return run
