"""The physical floor: the collector's hooks attached to programs that only count.

Every tracepoint the collector attaches (and its OpenSSL uprobes, for HTTPS)
gets a program that adds one to a per-CPU counter and returns: the cost of the
hooks themselves, which no user-space work can go below. The benches run it as
a third side (off / floor / on) and print its ratio beside the collector's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from otel_ebpf.receivers.openssl_probes import OpenSslProbe, openssl_probes
from otel_ebpf.receivers.sockets import TRACEFS, attached_tracepoints
from otel_ebpf.receivers.tls import mapped_paths

# One program for every tracepoint and one for every uprobe (the program types
# differ); plain functions, so no tracepoint's argument layout needs compiling.
COUNTING_PROGRAM = """
BPF_PERCPU_ARRAY(hits, u64, 1);
static inline int count(void) { u32 k = 0; u64 *n = hits.lookup(&k); if (n) *n += 1; return 0; }
int count_tracepoint(void *ctx) { return count(); }
int count_uprobe(struct pt_regs *ctx) { return count(); }
"""


@contextlib.contextmanager
def counting_probes(libssl: str | None = None) -> Iterator[None]:
    """The collector's hooks, counting only, while the block runs."""
    from bcc import BPF

    bpf = BPF(text=COUNTING_PROGRAM)
    for tp in (*attached_tracepoints(), "tcp/tcp_probe"):
        if (TRACEFS / "events" / tp).is_dir():
            bpf.attach_tracepoint(tp=tp.replace("/", ":"), fn_name="count_tracepoint")
    if libssl:
        count_at(bpf, libssl, openssl_probes(libssl))  # where the collector's sit
    try:
        yield
    finally:
        bpf.cleanup()


def count_at(bpf: Any, library: str, probes: list[OpenSslProbe]) -> None:
    """Counting uprobes and uretprobes of COUNTING_PROGRAM where `probes` sit."""
    for probe in probes:
        with contextlib.suppress(Exception):  # an older libssl lacks the _ex calls
            bpf.attach_uprobe(name=library, fn_name="count_uprobe", **probe.where())
            bpf.attach_uretprobe(name=library, fn_name="count_uprobe", **probe.where())


def libssl_of(pid: int) -> str | None:
    """The libssl a process maps (nginx's and wrk's are Debian's), for the HTTPS floor."""
    return next((p for p in mapped_paths(pid) if Path(p).name.startswith("libssl.so")), None)
