"""The collector's footprint: start to healthy, resident memory idle and after load.

Starts the collector six times as installed, alternating a start that compiles
its programs (an empty program cache) with one that loads those the last start
kept, and prints the median of each (launch to the health endpoint's 200,
polled every 100 ms) with the resident set idle after each kind, and the
median of three more from the cache while a nice-0 spinner keeps every CPU
busy (a node at full load: the collector lowers its priority only once
started, and loading at nice 19 took minutes there). Then reads the
resident set after saturating nginx + wrk for a while (about a million requests
here), and again once its periodic housekeeping has run: as installed (the span
budget on) and with a span for every request (`OTEL_EBPF_SPAN_BUDGET=0`).
Run as root: `.venv/bin/python bench/footprint.py [--seconds 25]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import every_cpu_busy, null_sink, wrk  # also puts tests/kernel/ on the path

from harness import CollectorProcess, Nginx
from otel_ebpf.pipeline import SWEEP_INTERVAL_S


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


DEFAULT_BUDGET = "0.05"  # OTEL_EBPF_SPAN_BUDGET as installed (the test harness sets 0)


def _after_load(collector: CollectorProcess, url: str, seconds: int) -> tuple[int, float, float]:
    """Requests made, resident MiB after them, and once the housekeeping ran."""
    _, _, requests = wrk(url, seconds, 4)
    time.sleep(2.0)
    loaded = _rss_mib(collector.proc.pid)
    time.sleep(SWEEP_INTERVAL_S + 2.0)
    return requests, loaded, _rss_mib(collector.proc.pid)


def _as_installed(programs: Path) -> dict[str, str]:
    """The collector's settings as installed, its programs cached in `programs`."""
    return {"OTEL_EBPF_PROGRAM_CACHE": str(programs), "OTEL_EBPF_SPAN_BUDGET": DEFAULT_BUDGET}


def _busy_starts(tmp: Path, exporters: dict[str, Any], programs: Path) -> list[float]:
    """Three starts from the cache, each while every CPU is busy."""
    times = []
    for n in range(3):
        with every_cpu_busy():
            began = time.monotonic()
            collector = CollectorProcess(
                tmp / f"collector-busy-{n}", exporters, extra_env=_as_installed(programs)
            )
            times.append(time.monotonic() - began)
        collector.stop()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=25)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-footprint-"))
    nginx = Nginx(tmp / "nginx")
    url = nginx.url("/index.html")
    programs = tmp / "programs"
    loads: dict[str, tuple[int, float, float]] = {}
    try:
        with null_sink() as port:
            exporters = {"otlp": {"endpoint": f"127.0.0.1:{port}", "insecure": True}}
            starts: dict[str, list[float]] = {"compiled": [], "cached": []}
            idle: dict[str, float] = {}
            for n in range(6):
                kind = "cached" if n % 2 else "compiled"
                cache = programs if n % 2 else tmp / f"empty-{n}"  # kept by the start before
                began = time.monotonic()
                collector = CollectorProcess(  # healthy
                    tmp / f"collector-{n}", exporters, extra_env=_as_installed(cache)
                )
                starts[kind].append(time.monotonic() - began)
                if n % 2 == 0:  # its programs are what the next start loads
                    programs.mkdir(mode=0o700, exist_ok=True)
                    for kept in cache.glob("program-*.json"):
                        kept.replace(programs / kept.name)
                time.sleep(2.0)
                idle[kind] = _rss_mib(collector.proc.pid)
                if n < 5:
                    collector.stop()
            loads["default budget"] = _after_load(collector, url, args.seconds)
            collector.stop()
            busy = _busy_starts(tmp, exporters, programs)
            collector = CollectorProcess(
                tmp / "collector-every-span",
                exporters,
                extra_env={"OTEL_EBPF_PROGRAM_CACHE": str(programs)},  # budget 0
            )
            loads["a span per request"] = _after_load(collector, url, args.seconds)
            collector.stop()
    finally:
        nginx.stop()
    for kind, times in starts.items():
        print(
            f"start to healthy, programs {kind}: median {statistics.median(times):.2f} s"
            f" of {len(times)} starts; resident idle {idle[kind]:.1f} MiB"
        )
    print(
        f"start to healthy, programs cached, every CPU busy: median {statistics.median(busy):.2f} s"
        f" of {len(busy)} starts"
    )
    for name, (requests, loaded, settled) in loads.items():
        print(
            f"resident memory, {name}: after {requests} saturating requests {loaded:.1f} MiB,"
            f" {settled:.1f} MiB once its housekeeping ran"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
