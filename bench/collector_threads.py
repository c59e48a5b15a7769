"""The collector's CPU per request, thread by thread: where a request's cost goes.

nginx paced by wrk (each connection waits 1 ms between requests), both ends
traced, a span for every request (`OTEL_EBPF_SPAN_BUDGET=0`) exported over
OTLP/gRPC to a sink process that discards. Two settings alternate, round by
round: spans only, and spans with a metrics pipeline (OTLP, every 5 s). Each
round starts a collector, warms it for 3 s, then reads every thread's CPU time
(/proc/PID/task/*/schedstat: time on CPU; stat: user and system) before and
after the measured load; the collector names its threads where the kernel shows
them (span-export, otlp-grpc_0...), and its main thread is the processing
thread. Prints the medians per thread, in µs a request.
Run as root: `.venv/bin/python bench/collector_threads.py [--rounds 3 --seconds 10]
[--only spans|spans+metrics]`.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from common import (  # also puts tests/kernel on the path
    PACED_LUA,
    drained,
    null_sink,
    wrk,
    wrk_arguments,
)

from harness import CollectorProcess, Nginx

SETTINGS = ("spans", "spans+metrics")
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, tuple[float, float, float]]:
    """Seconds on CPU, user and system per thread name (threads of one name
    summed; the main thread is `processing`)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    task = Path(f"/proc/{pid}/task")
    for tid in os.listdir(task):
        try:
            name = (task / tid / "comm").read_text().strip()
            fields = (task / tid / "stat").read_text().rsplit(")", 1)[1].split()
            on_cpu_ns = int((task / tid / "schedstat").read_text().split()[0])
        except OSError:  # ended since the listing
            continue
        totals = out["processing" if int(tid) == pid else name]
        totals[0] += on_cpu_ns / 1e9
        totals[1] += int(fields[11]) * _TICK_S
        totals[2] += int(fields[12]) * _TICK_S
    return {name: (t[0], t[1], t[2]) for name, t in out.items()}


def _round(
    tmp: Path, setting: str, port: int, url: str, script: Path, seconds: int, connections: int
) -> tuple[int, dict[str, tuple[float, float, float]]]:
    """Requests made, and each thread's (on CPU, user, system) over them."""
    collector = CollectorProcess(
        tmp,
        {"otlp": {"endpoint": f"127.0.0.1:{port}", "insecure": True}},
        extra_env={"OTEL_EBPF_SPAN_BUDGET": "0", "OTEL_METRIC_EXPORT_INTERVAL": "5000"},
        metrics=["otlp"] if setting == "spans+metrics" else None,
    )
    try:
        wrk(url, 3, connections, script)  # connections known, caches warm, threads named
        before = _threads(collector.proc.pid)
        _, _, requests = wrk(url, seconds, connections, script)
        drained(collector)
        after = _threads(collector.proc.pid)
    finally:
        collector.stop()
    zero = (0.0, 0.0, 0.0)
    spent = {
        name: tuple(a - b for a, b in zip(used, before.get(name, zero), strict=True))
        for name, used in after.items()
    }
    return requests, spent  # type: ignore[return-value]


def main() -> int:
    args = wrk_arguments(__doc__)
    settings = [s for s in SETTINGS if not args.only or s in args.only.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-threads-"))
    script = tmp / "paced.lua"
    script.write_text(PACED_LUA)
    nginx = Nginx(tmp / "nginx")
    url = nginx.url("/index.html")
    # setting -> thread -> per round (on CPU, user, system) in µs a request
    per_request: dict[str, dict[str, list[tuple[float, ...]]]] = {
        s: defaultdict(list) for s in settings
    }
    totals: dict[str, list[float]] = {s: [] for s in settings}
    try:
        with null_sink() as port:
            for n in range(args.rounds):
                for setting in settings:
                    where = tmp / f"{setting}-{n}"
                    requests, spent = _round(
                        where, setting, port, url, script, args.seconds, args.connections
                    )
                    for name, used in spent.items():
                        per_request[setting][name].append(tuple(v * 1e6 / requests for v in used))
                    totals[setting].append(sum(u[0] for u in spent.values()) * 1e6 / requests)
                    print(f"  round {n + 1} {setting}: {totals[setting][-1]:.1f} µs a request")
    finally:
        nginx.stop()
    print(
        f"collector CPU per request by thread, nginx + wrk -c{args.connections} paced, "
        f"a span per request, "
        f"{args.rounds} rounds x {args.seconds}s, medians (µs a request: on CPU, user, system)"
    )
    for setting in settings:
        print(f"  {setting}: {statistics.median(totals[setting]):.1f} in all")
        rows = sorted(
            per_request[setting].items(), key=lambda kv: -statistics.median(r[0] for r in kv[1])
        )
        for name, rounds in rows:
            on_cpu, user, system = (statistics.median(r[i] for r in rounds) for i in range(3))
            if on_cpu >= 0.1:
                print(f"    {name:18s} {on_cpu:6.1f}   (user {user:5.1f}, system {system:5.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
