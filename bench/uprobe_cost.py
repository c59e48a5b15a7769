"""What one uprobe hit costs a Go function, by where it sits: at the entry (a CMPQ
the kernel steps out of line) or on the stack check's JBE (a branch the kernel
emulates), where receivers/goroutines.py puts the collector's. CPU time of
200,000 calls with a program that does nothing attached, per call.

Run as root: `.venv/bin/python bench/uprobe_cost.py`.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts tests/kernel on the path)
from bcc import BPF
from elftools.elf.elffile import ELFFile

from harness import build_go
from otel_ebpf.processors.profiling.gopclntab import go_functions
from otel_ebpf.receivers.goroutines import PROLOGUE_BYTES, stack_check_branch

CALLS = 200_000


def cpu_per_call(binary: Path) -> float:
    """Microseconds of CPU (user and system) per call of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([str(binary)], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return spent / CALLS * 1e6


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-uprobe-"))
    binary = build_go(Path(__file__).parent / "uprobe_loop" / "main.go", tmp / "uprobe_loop")
    with open(binary, "rb") as f:
        elf = ELFFile(f)
        table, text = elf.get_section_by_name(".gopclntab"), elf.get_section_by_name(".text")
        entry = next(
            start
            for start, _, name in go_functions(table.data(), text["sh_addr"])
            if name == "main.probed"
        )
        f.seek(entry - text["sh_addr"] + text["sh_offset"])
        branch = stack_check_branch(f.read(PROLOGUE_BYTES))
    assert branch is not None, "main.probed has no stack check"
    print(f"no probe: {cpu_per_call(binary):.3f} us per call")
    for where, address in (("entry (CMPQ)", entry), ("stack check's JBE", entry + branch)):
        bpf = BPF(text="int noop(struct pt_regs *ctx) { return 0; }")
        bpf.attach_uprobe(name=str(binary), addr=address, fn_name="noop")
        runs = [cpu_per_call(binary) for _ in range(3)]
        bpf.cleanup()
        print(f"uprobe at the {where}: {min(runs):.2f}-{max(runs):.2f} us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
