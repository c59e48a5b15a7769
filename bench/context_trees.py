"""One trace per request across A -> B -> C, per server runtime and concurrency.

For threads (ThreadingHTTPServer), asyncio (one event loop; every Python found:
3.11 and 3.12 here), Node and Go, three uninstrumented hops of the same runtime
forward each request's own path; clients drive 1, 8 and 64 concurrent
keep-alive connections. From the spans the collector exports it counts, per
case, complete trees (all six spans in one trace, each the parent of the next)
and wrong links (a parent belonging to another request: must be 0). With
`--probability P` the collector keeps spans for a fixed share P of HTTP/1
requests (the span budget's kernel decision): it then counts the requests whose
spans were kept or shed whole (all six or none) and those split apart. Run as
root: `.venv/bin/python bench/context_trees.py [--probability 0.5] [--only go,threads]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401  (puts tests/kernel on the path)

from harness import Chain, CollectorProcess, asyncio_pythons, build_go, get_distinct
from otlp_sink import GrpcSink, Span, chain_trees

KERNEL_TESTS = Path(__file__).parent.parent / "tests" / "kernel"
CHAINS = KERNEL_TESTS / "chains"  # one hop per runtime, shared with the kernel tests
REQUESTS = {1: 100, 8: 400, 64: 640}


def _runtimes(tmp: Path) -> dict[str, list[str]]:
    """Runtime name -> the argv that starts one hop (port and next port appended)."""
    go_binary = build_go(KERNEL_TESTS / "go_chain" / "main.go", tmp / "go_chain")
    found: dict[str, list[str]] = {"threads": [sys.executable, str(CHAINS / "threads_hop.py")]}
    for name, python in sorted(asyncio_pythons().items()):
        found[f"asyncio-{name}"] = [python, str(CHAINS / "asyncio_hop.py")]
    if shutil.which("node"):
        found["node"] = ["node", str(CHAINS / "node_hop.js")]
    found["go"] = [str(go_binary)]
    return found


def partial(spans: list[Span], requests: int) -> int:
    """Requests with some of their six spans but not all (a trace split by shedding)."""
    per_path: dict[str, int] = {}
    for s in spans:
        path = str(s.attributes.get("url.path"))
        per_path[path] = per_path.get(path, 0) + 1
    return sum(1 for n in per_path.values() if n < 6)


def settled(read: Callable[[], list[Span]], want: int) -> list[Span]:
    """What `read` returns once it has `want` spans, or has not grown for 2 s."""
    deadline, last, still = time.monotonic() + 30, -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(read())
        if n >= want:
            break
        if n != last:
            last, still = n, time.monotonic()
        elif time.monotonic() - still > 2.0:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    return read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probability", type=float, help="a fixed share of requests kept")
    parser.add_argument("--only", default="", help="runtimes, comma-separated")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-trees-"))
    sink = GrpcSink()
    env = {"OTEL_EBPF_SPAN_PROBABILITY": str(args.probability)} if args.probability else {}
    collector = CollectorProcess(
        tmp / "collector",
        {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "insecure": True}},
        extra_env=env,
    )
    rows = []
    try:
        runtimes = _runtimes(tmp)
        chosen = args.only.split(",") if args.only else list(runtimes)
        for name, argv in ((n, runtimes[n]) for n in chosen):
            chain = Chain(argv, name)
            try:
                for connections, total in REQUESTS.items():
                    tag = f"{name}-{connections}"
                    done = get_distinct(chain.port, tag, total // connections, connections)

                    def mine(t: str = tag) -> list[Span]:
                        return [
                            s
                            for s in list(sink.store.spans)
                            if str(s.attributes.get("url.path", "")).startswith(f"/{t}/")
                        ]

                    spans = settled(mine, 6 * done)
                    complete, wrong = chain_trees(spans)
                    rows.append(
                        (name, connections, done, complete, wrong, len(spans), partial(spans, done))
                    )
            finally:
                chain.stop()
    finally:
        collector.stop()
        sink.stop()
    if args.probability:
        print(f"spans kept for a fixed {args.probability} of HTTP/1 requests")
    print("runtime      clients requests  complete trees wrong links   spans  split")
    for name, connections, done, complete, wrong, seen, split in rows:
        print(
            f"{name:12} {connections:7d} {done:8d} {complete:8d} ({100 * complete / done:3.0f} %)"
            f" {wrong:11d} {seen:5d}/{6 * done} {split:6d}"
        )
    return 1 if any(row[4] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
