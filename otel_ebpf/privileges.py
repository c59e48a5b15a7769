"""Whether this process may load eBPF programs and read other processes' /proc."""

from __future__ import annotations

CAP_DAC_READ_SEARCH = 2
CAP_SYS_ADMIN = 21
CAP_SYS_PTRACE = 19
CAP_PERFMON = 38
CAP_BPF = 39

NEEDED = {"CAP_BPF": CAP_BPF, "CAP_PERFMON": CAP_PERFMON, "CAP_SYS_PTRACE": CAP_SYS_PTRACE}

MISSING_PRIVILEGES = (
    "otel-ebpf needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE) to load eBPF "
    "programs and read other processes' /proc entries; run it with sudo"
)


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def missing_capabilities(caps: int | None = None) -> list[str]:
    """Names of the capabilities still needed (empty when root-equivalent)."""
    caps = effective_capabilities() if caps is None else caps
    if caps & (1 << CAP_SYS_ADMIN) and caps & (1 << CAP_SYS_PTRACE):
        return []
    return [name for name, bit in NEEDED.items() if not caps & (1 << bit)]


def can_trace() -> bool:
    """Judged by capabilities, not uid: root in a restricted container may lack them."""
    return not missing_capabilities()
