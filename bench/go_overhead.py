"""What goroutine context costs a Go program: a Go chain A -> B -> C under wrk,
without the collector, with it but no Go probes (OTEL_EBPF_GO_GOROUTINES=false),
and with them; and, without the collector, the Go uprobes alone (programs that do
nothing) where the collector puts them (the stack checks' branches) and at the
functions' entries. Alternating rounds, medians; prints throughput, p99 and the
Go processes' own CPU per request (the uprobes run in their threads).

Run as root: `.venv/bin/python bench/go_overhead.py [--rounds 3] [--seconds 8]`.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
from common import null_sink, wrk, wrk_arguments  # also puts tests/kernel on the path

from harness import Chain, CollectorProcess, build_go
from otel_ebpf.receivers.goroutines import probes_of

KERNEL_TESTS = Path(__file__).parent.parent / "tests" / "kernel"
DEFAULT_BUDGET = {"OTEL_EBPF_SPAN_BUDGET": "0.05"}  # as installed (the harness sets 0)
SETTINGS: dict[str, dict[str, str] | None] = {  # collector environment (None: none)
    "without the collector": None,
    "collector, no Go probes": {**DEFAULT_BUDGET, "OTEL_EBPF_GO_GOROUTINES": "false"},
    "collector, goroutine context": DEFAULT_BUDGET,
    "uprobes alone, at the branches": None,
    "uprobes alone, at the entries": None,
}


@contextlib.contextmanager
def uprobes_alone(binary: Path, at_branch: bool) -> Iterator[None]:
    """Programs that do nothing on the collector's Go functions."""
    from bcc import BPF

    with open(binary, "rb") as f:
        _, probes, _ = probes_of(f, at_branch)
    bpf = BPF(text="int noop(struct pt_regs *ctx) { return 0; }")
    for address, _ in probes:
        bpf.attach_uprobe(name=str(binary), addr=address, fn_name="noop")
    try:
        yield
    finally:
        bpf.cleanup()


def main() -> int:
    args = wrk_arguments(__doc__)
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-go-"))
    binary = build_go(KERNEL_TESTS / "go_chain" / "main.go", tmp / "go_chain", "-ldflags=-s -w")
    chain = Chain([str(binary)], "go")
    hops = [psutil.Process(p.pid) for p in chain.procs]
    url = f"http://127.0.0.1:{chain.port}/bench"
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in SETTINGS}
    stack = contextlib.ExitStack()
    try:
        sink_port = stack.enter_context(null_sink())
        otlp = {"otlp": {"endpoint": f"127.0.0.1:{sink_port}", "insecure": True}}
        wrk(url, 2, args.connections)  # warm up
        for _ in range(args.rounds):
            for name, env in SETTINGS.items():
                with contextlib.ExitStack() as setting:
                    if env is not None:
                        collector = CollectorProcess(tmp / "collector", otlp, extra_env=env)
                        setting.callback(collector.stop)
                        wrk(url, 1, 1)  # the collector sees the chain and probes it
                    elif name.startswith("uprobes alone"):
                        setting.enter_context(uprobes_alone(binary, "branches" in name))
                    before = sum(sum(h.cpu_times()[:2]) for h in hops)
                    rps, p99, done = wrk(url, args.seconds, args.connections)
                    cpu = sum(sum(h.cpu_times()[:2]) for h in hops) - before
                results[name].append((rps, p99, cpu / done * 1e6))
    finally:
        chain.stop()
        stack.close()
    med = statistics.median
    base_rps = med(r[0] for r in results["without the collector"])
    print(f"Go chain A -> B -> C, wrk -c{args.connections}, {args.rounds} rounds, medians")
    print(f"{'':32} {'req/s':>8} {'ratio':>6} {'p99 ms':>7} {'Go CPU per request':>19}")
    for name, rows in results.items():
        rps, p99, cpu = (med(r[i] for r in rows) for i in range(3))
        print(f"{name:32} {rps:8.0f} {rps / base_rps:6.3f} {p99 * 1e3:7.2f} {cpu:16.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
