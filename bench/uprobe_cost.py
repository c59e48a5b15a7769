"""What one uprobe hit costs a Go function, by where it sits: at the entry (a CMPQ
the kernel steps out of line) or on the stack check's JBE (a branch the kernel
emulates), where receivers/goroutines.py puts the collector's. CPU time of
200,000 calls with a program that does nothing attached, per call.

Then the same for OpenSSL over nginx and wrk (HTTPS, paced): counting uprobes
at the exported `SSL_read`/`SSL_write` entries (a `sub` stepped out of line)
against where receivers/openssl_probes.py puts the collector's (the internal
functions' first push, emulated), and none; alternating rounds, medians of the
machine's busy CPU per request and of wrk's p99.

Run as root: `.venv/bin/python bench/uprobe_cost.py --rounds 3` (`--only go` or
`--only openssl` for one of the two; `--seconds`, `--connections` for wrk's).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bcc import BPF
from common import PACED_LUA, busy_seconds, wrk, wrk_arguments  # puts tests/kernel on the path
from elftools.elf.elffile import ELFFile
from floor import COUNTING_PROGRAM, count_at

from harness import Nginx, build_go
from otel_ebpf.processors.profiling.gopclntab import go_functions
from otel_ebpf.receivers.goroutines import PROLOGUE_BYTES, stack_check_branch
from otel_ebpf.receivers.openssl_probes import OpenSslProbe, exported_entries, openssl_probes
from otel_ebpf.receivers.tls import host_libraries

CALLS = 200_000


def cpu_per_call(binary: Path) -> float:
    """Microseconds of CPU (user and system) per call of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([str(binary)], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return spent / CALLS * 1e6


def go_function() -> None:
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


def https_round(
    url: str, args: argparse.Namespace, script: Path, library: str, probes: list[OpenSslProbe]
) -> tuple[float, float, float]:
    """(busy CPU per request in us, p99 in ms, probe hits per request) of one wrk run."""
    bpf = BPF(text=COUNTING_PROGRAM)  # (a BPF object with no table read yet is falsy: len 0)
    try:
        count_at(bpf, library, probes)
        before = busy_seconds()
        _, p99, total = wrk(url, args.seconds, args.connections, script)
        busy = busy_seconds() - before
        hits = bpf["hits"].sum(0).value
    finally:
        bpf.cleanup()
    return busy / total * 1e6, p99 * 1e3, hits / total


def openssl(args: argparse.Namespace) -> None:
    library = host_libraries()[0]
    sides = {
        "no probes": [],
        "at the exported entries": exported_entries(),
        "where the collector puts them": openssl_probes(library),
    }
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-openssl-"))
    script = tmp / "paced.lua"
    script.write_text(PACED_LUA)
    nginx = Nginx(tmp / "nginx")
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sides}
    try:
        url = nginx.https_url("/index.html")
        wrk(url, 2, args.connections, script)  # warm up
        for r in range(args.rounds):
            for name in list(sides) if r % 2 == 0 else reversed(sides):
                results[name].append(https_round(url, args, script, library, sides[name]))
    finally:
        nginx.stop()
    print(
        f"OpenSSL ({library}), nginx + wrk -c{args.connections} over HTTPS paced,"
        f" {args.rounds} rounds x {args.seconds}s:"
    )
    med = statistics.median
    for name, runs in results.items():
        print(
            f"  {name:30s} busy CPU {med(r[0] for r in runs):6.1f} us a request,"
            f" p99 {med(r[1] for r in runs):.3f} ms, {med(r[2] for r in runs):.1f} hits a request"
        )


def main() -> int:
    args = wrk_arguments(__doc__)
    chosen = args.only.split(",") if args.only else ["go", "openssl"]
    if "go" in chosen:
        go_function()
    if "openssl" in chosen:
        openssl(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
