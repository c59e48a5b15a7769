"""What the overhead benchmarks share: reading the collector's telemetry and memory."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kernel"))
from harness import CollectorProcess


def drained(collector: CollectorProcess) -> dict[str, int]:
    """Telemetry once the pipeline has caught up (spans built stop growing)."""
    last = collector.telemetry()
    for _ in range(100):
        time.sleep(0.3)
        now = collector.telemetry()
        if now["spans_built"] == last["spans_built"]:
            return now
        last = now
    return last


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
