"""What asyncio task context costs a Python program: an asyncio chain A -> B -> C
(tests/kernel/chains/asyncio_hop.py) under wrk, on each interpreter the tests
use, without the collector, with it but no asyncio probes
(OTEL_EBPF_PYTHON_ASYNCIO=false), and with them; and, without the collector,
the uprobes alone (programs that do nothing) on `task_step_impl` (entry and
return) and `TaskObj_dealloc`. Alternating rounds, medians; prints throughput,
p99 and the chain's own CPU per request (the uprobes run in its threads).

Run as root: `.venv/bin/python bench/asyncio_overhead.py [--rounds 3] [--seconds 8]
[--only 3.12]`.
"""

from __future__ import annotations

import contextlib
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
from otel_ebpf.receivers.asyncio_tasks import probes_of

HOP = Path(__file__).parent.parent / "tests" / "kernel" / "chains" / "asyncio_hop.py"
DEFAULT_BUDGET = {"OTEL_EBPF_SPAN_BUDGET": "0.05"}  # as installed (the harness sets 0)


def asyncio_module(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import _asyncio; print(_asyncio.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@contextlib.contextmanager
def uprobes_alone(module: str) -> Iterator[None]:
    """Programs that do nothing where the collector probes `_asyncio`."""
    from bcc import BPF

    probes, why = probes_of(module)
    if not probes:
        raise SystemExit(f"{module}: {why}")
    bpf = BPF(text="int noop(struct pt_regs *ctx) { return 0; }")
    for probe in probes:
        attach = bpf.attach_uretprobe if probe.on_return else bpf.attach_uprobe
        attach(name=module, addr=probe.address, fn_name="noop")
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
        for name, python in asyncio_pythons().items():
            if only and name not in only:
                continue
            module = asyncio_module(python)
            settings: dict[str, Setting] = {
                "without the collector": contextlib.nullcontext,
                "collector, no asyncio probes": with_collector(
                    where, otlp, {**DEFAULT_BUDGET, "OTEL_EBPF_PYTHON_ASYNCIO": "false"}
                ),
                "collector, task context": with_collector(where, otlp, DEFAULT_BUDGET),
                "uprobes alone": lambda m=module: uprobes_alone(m),  # type: ignore[misc]
            }
            chain = Chain([python, str(HOP)], f"asyncio{name}")
            try:
                compare_on_chain(f"asyncio chain A -> B -> C, Python {name}", chain, settings, args)
            finally:
                chain.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
