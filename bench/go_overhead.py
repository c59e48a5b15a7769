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
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common import (  # also puts tests/kernel on the path
    Setting,
    compare_on_chain,
    null_sink,
    with_collector,
    wrk_arguments,
)

from harness import Chain, build_go
from otel_ebpf.receivers.goroutines import probes_of

KERNEL_TESTS = Path(__file__).parent.parent / "tests" / "kernel"
DEFAULT_BUDGET = {"OTEL_EBPF_SPAN_BUDGET": "0.05"}  # as installed (the harness sets 0)


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
    try:
        with null_sink() as sink_port:
            otlp = {"otlp": {"endpoint": f"127.0.0.1:{sink_port}", "insecure": True}}
            where = tmp / "collector"
            settings: dict[str, Setting] = {
                "without the collector": contextlib.nullcontext,
                "collector, no Go probes": with_collector(
                    where, otlp, {**DEFAULT_BUDGET, "OTEL_EBPF_GO_GOROUTINES": "false"}
                ),
                "collector, goroutine context": with_collector(where, otlp, DEFAULT_BUDGET),
                "uprobes alone, at the branches": lambda: uprobes_alone(binary, True),
                "uprobes alone, at the entries": lambda: uprobes_alone(binary, False),
            }
            compare_on_chain("Go chain A -> B -> C", chain, settings, args)
    finally:
        chain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
