"""A stand-in for the collector's CPU use: a process at nice 19 that keeps one
CPU busy for a share of each 10 ms and sleeps the rest, doing nothing useful.

The database benches run it beside the load with the share the collector used
in the same round: a ping-pong load on a small VM can lose more to any
low-priority neighbour waking now and then than the neighbour's CPU share
suggests, and this tells that apart from what the collector's own work costs.

    .venv/bin/python bench/neighbour.py CORES   (e.g. 0.12; runs until killed)
"""

from __future__ import annotations

import os
import sys
import time

PERIOD_S = 0.010


def main() -> None:
    share = min(max(float(sys.argv[1]), 0.0), 1.0)
    os.nice(19)
    busy = share * PERIOD_S
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < busy:
            pass
        time.sleep(PERIOD_S - busy)


if __name__ == "__main__":
    main()
