"""The collector's footprint: start to healthy, resident memory idle and after load.

Starts the collector three times (the median start is printed: launch to the
health endpoint's 200, polled every 100 ms), reads its resident set idle, then
after saturating nginx + wrk for a while (about a million requests here), and
again once its periodic housekeeping has run.
Run as root: `.venv/bin/python bench/footprint.py [--seconds 25]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import null_sink, wrk  # also puts tests/kernel/ on the path

from harness import CollectorProcess, Nginx
from otel_ebpf.pipeline import SWEEP_INTERVAL_S


def _rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=25)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-footprint-"))
    nginx = Nginx(tmp / "nginx")
    try:
        with null_sink() as port:
            exporters = {"otlp": {"endpoint": f"127.0.0.1:{port}", "insecure": True}}
            starts = []
            for n in range(3):
                began = time.monotonic()
                collector = CollectorProcess(tmp / f"collector-{n}", exporters)  # healthy
                starts.append(time.monotonic() - began)
                if n < 2:
                    collector.stop()
            time.sleep(2.0)
            idle = _rss_mib(collector.proc.pid)
            _, _, requests = wrk(nginx.url("/index.html"), args.seconds, 4)
            time.sleep(2.0)
            loaded = _rss_mib(collector.proc.pid)
            time.sleep(SWEEP_INTERVAL_S + 2.0)  # the collector's housekeeping ran
            settled = _rss_mib(collector.proc.pid)
            collector.stop()
    finally:
        nginx.stop()
    print(f"start to healthy: median {statistics.median(starts):.2f} s of {len(starts)} starts")
    print(
        f"resident memory: idle {idle:.1f} MiB; after {requests} requests {loaded:.1f} MiB,"
        f" {settled:.1f} MiB once its housekeeping ran"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
