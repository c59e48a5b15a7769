"""Collector memory over 100,000 short connections (one request each): must plateau.

nginx + `ab` without keep-alive, in rounds of 10,000 connections; prints the
collector's RSS after each round, and its CPU seconds per 1,000 connections,
with spans and metrics both on (the full pipeline, exporting to a file).
Run as root: `.venv/bin/python bench/memory_plateau.py [connections]`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from common import drained  # also puts tests/kernel on the path

from harness import CollectorProcess, Nginx, free_port


def main() -> int:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = 10
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-mem-"))
    nginx = Nginx(tmp / "nginx")
    out = tmp / "spans.jsonl"
    collector = CollectorProcess(
        tmp / "collector",
        {"file": {"path": str(out)}, "prometheus": {"endpoint": f"127.0.0.1:{free_port()}"}},
        metrics=["prometheus"],  # measured in full, scraped by nobody
    )
    proc = psutil.Process(collector.proc.pid)
    try:
        cpu0 = sum(proc.cpu_times()[:2])
        print(f"{total} short connections in {rounds} rounds (ab -c 8, no keep-alive)")
        for r in range(rounds):
            subprocess.run(
                ["ab", "-q", "-n", str(total // rounds), "-c", "8", nginx.url("/index.html")],
                check=True,
                capture_output=True,
            )
            t = drained(collector)
            out.write_text("")  # keep the disk out of it
            rss = proc.memory_info().rss / 2**20
            print(
                f"  after {(r + 1) * total // rounds:>7} connections: RSS {rss:6.1f} MiB,"
                f" tracked {t['connections_tracked']}, lost events {t['events_lost']}"
            )
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        print(f"  collector CPU: {cpu / total * 1000:.3f} s per 1,000 connections (1 request each)")
    finally:
        collector.stop()
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
