"""What asyncio task and Node callback context cost: a chain A -> B -> C of one
event-loop runtime (tests/kernel/chains/asyncio_hop.py on each Python the tests
use, node_hop.js) under wrk, without the collector, with it but without the
runtime's probes (OTEL_EBPF_PYTHON_ASYNCIO / OTEL_EBPF_NODE_CALLBACKS=false),
and with them; and, without the collector, the uprobes alone (programs that do
nothing) where the collector puts them: `task_step_impl` (entry and return) and
`TaskObj_dealloc`, or `node::InternalMakeCallback` (entry and return).
Alternating rounds, medians; prints throughput, p99 and the chain's own CPU per
request (the uprobes run in its threads).

Run as root: `.venv/bin/python bench/event_loop_overhead.py [--rounds 3]
[--seconds 8] [--only 3.12,node]`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
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

from harness import Chain, asyncio_pythons
from otel_ebpf.receivers.asyncio_tasks import Uprobe, probes_of
from otel_ebpf.receivers.node_callbacks import callback_address, probes_at

CHAINS = Path(__file__).parent.parent / "tests" / "kernel" / "chains"
DEFAULT_BUDGET = {"OTEL_EBPF_SPAN_BUDGET": "0.05"}  # as installed (the harness sets 0)


def asyncio_module(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import _asyncio; print(_asyncio.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def runtimes() -> dict[str, tuple[list[str], str, list[Uprobe], str]]:
    """Name -> (a hop's argv, the probed file, its probes, the switch that turns them off)."""
    found = {}
    for name, python in asyncio_pythons().items():
        module = asyncio_module(python)
        probes, why = probes_of(module)
        if not probes:
            raise SystemExit(f"{module}: {why}")
        hop = [python, str(CHAINS / "asyncio_hop.py")]
        found[name] = (hop, module, probes, "OTEL_EBPF_PYTHON_ASYNCIO")
    node = shutil.which("node")
    address = callback_address(str(Path(node).resolve())) if node else None
    if node and address is not None:
        hop = [node, str(CHAINS / "node_hop.js")]
        found["node"] = (
            hop,
            str(Path(node).resolve()),
            probes_at(address),
            "OTEL_EBPF_NODE_CALLBACKS",
        )
    return found


@contextlib.contextmanager
def uprobes_alone(path: str, probes: list[Uprobe]) -> Iterator[None]:
    """Programs that do nothing where the collector probes."""
    from bcc import BPF

    bpf = BPF(text="int noop(struct pt_regs *ctx) { return 0; }")
    for probe in probes:
        attach = bpf.attach_uretprobe if probe.on_return else bpf.attach_uprobe
        attach(name=path, addr=probe.address, fn_name="noop")
    try:
        yield
    finally:
        bpf.cleanup()


def main() -> int:
    args = wrk_arguments(__doc__)
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-asyncio-"))
    only = set(filter(None, args.only.split(",")))
    with null_sink() as sink_port:
        otlp = {"otlp": {"endpoint": f"127.0.0.1:{sink_port}", "insecure": True}}
        where = tmp / "collector"
        for name, (hop, path, probes, switch) in runtimes().items():
            if only and name not in only:
                continue
            settings: dict[str, Setting] = {
                "without the collector": contextlib.nullcontext,
                "collector, without these probes": with_collector(
                    where, otlp, {**DEFAULT_BUDGET, switch: "false"}
                ),
                "collector, with them": with_collector(where, otlp, DEFAULT_BUDGET),
                "uprobes alone": lambda p=path, u=probes: uprobes_alone(p, u),  # type: ignore[misc]
            }
            chain = Chain(hop, f"loop{name.replace('.', '')}")
            try:
                compare_on_chain(f"chain A -> B -> C: {name}", chain, settings, args)
            finally:
                chain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
