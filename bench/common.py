"""What the overhead benchmarks share: the wrk driver, the collector's telemetry, memory."""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kernel"))
from harness import CollectorProcess, end_process, free_port, listening, wait_until


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


def wrk_arguments(description: str | None) -> argparse.Namespace:
    """--rounds, --seconds and --connections of the benches that drive wrk."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated scenario names to run")
    return parser.parse_args()
