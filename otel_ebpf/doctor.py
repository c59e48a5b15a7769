"""`otel-ebpf doctor`: what this kernel and this process can do, one line per check."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib
import os
import platform
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import psutil

from otel_ebpf import native
from otel_ebpf.config import MemoryLimiterConfig
from otel_ebpf.memory_limit import MIB, MemoryLimiter, cgroup_memory_limit
from otel_ebpf.privileges import missing_capabilities
from otel_ebpf.receivers.asyncio_tasks import probes_of
from otel_ebpf.receivers.base_types import ReceiverError
from otel_ebpf.receivers.openssl_probes import openssl_probes, placement
from otel_ebpf.receivers.program_cache import DEFAULT_PROGRAM_CACHE, directory_problem, kept
from otel_ebpf.receivers.sockets import (
    KERNEL_BTF,
    OPTIONAL_PLAIN_SYSCALLS,
    REQUIRED_TRACEPOINTS,
    TRACEFS,
    SocketReceiver,
    kernel_has_may_goto,
    kernel_has_task_storage,
    task_registers_missing,
    tracepoint_exists,
)
from otel_ebpf.receivers.tls import host_libraries, other_tls_stack

OK, WARN, FAIL, INFO = "OK", "WARN", "FAIL", "INFO"

_SYS_BPF = 321
_SYS_PERF_EVENT_OPEN = 298
_BPF_MAP_CREATE = 0
_MAP_ARRAY = 2
_MAP_RINGBUF = 27


class Check(NamedTuple):
    status: str
    name: str
    detail: str


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bpf_map_create(map_type: int, key: int, value: int, entries: int) -> tuple[bool, str]:
    """Create and close a map through the raw bpf() syscall (x86_64 numbers)."""
    if platform.machine() != "x86_64":
        return False, "check implemented for x86_64 only"
    attr = ctypes.create_string_buffer(struct.pack("<IIII", map_type, key, value, entries), 128)
    libc = _libc()
    fd = libc.syscall(_SYS_BPF, _BPF_MAP_CREATE, attr, 128)
    if fd < 0:
        return False, os.strerror(ctypes.get_errno())
    os.close(fd)
    return True, ""


def _perf_event_open() -> tuple[bool, str]:
    if platform.machine() != "x86_64":
        return False, "check implemented for x86_64 only"
    # struct perf_event_attr: type=PERF_TYPE_SOFTWARE(1), size, config=CPU_CLOCK(0), disabled bit
    attr = ctypes.create_string_buffer(struct.pack("<IIQQQQ", 1, 128, 0, 0, 0, 1), 128)
    fd = _libc().syscall(_SYS_PERF_EVENT_OPEN, attr, 0, -1, -1, 0)
    if fd < 0:
        return False, os.strerror(ctypes.get_errno())
    os.close(fd)
    return True, ""


def _privileges() -> Check:
    missing = missing_capabilities()
    if not missing:
        return Check(
            OK, "privileges", f"uid {os.geteuid()}, capabilities to load eBPF and read /proc"
        )
    return Check(FAIL, "privileges", f"missing {', '.join(missing)}: run as root or grant them")


def _bpf_syscall() -> Check:
    ok, err = _bpf_map_create(_MAP_ARRAY, 4, 4, 1)
    return (
        Check(OK, "bpf() syscall", "map created")
        if ok
        else Check(
            FAIL, "bpf() syscall", f"{err}: needs CAP_BPF and a kernel with CONFIG_BPF_SYSCALL"
        )
    )


def _ring_buffer() -> Check:
    ok, err = _bpf_map_create(_MAP_RINGBUF, 0, 0, 4096)
    return (
        Check(OK, "BPF ring buffer", "supported")
        if ok
        else Check(
            FAIL,
            "BPF ring buffer",
            f"{err}: needs " + ("CAP_BPF" if err == os.strerror(1) else "Linux 5.8 or later"),
        )
    )


def _btf() -> Check:
    if KERNEL_BTF.exists():
        return Check(OK, "BTF", f"{KERNEL_BTF} present")
    return Check(
        WARN,
        "BTF",
        f"no {KERNEL_BTF}: Go programs get no goroutine context, and no task storage (below)",
    )


def _may_goto_loops() -> Check:
    if kernel_has_may_goto():
        return Check(OK, "may_goto loops", "the programs' loops verify in a tenth of the time")
    return Check(
        INFO, "may_goto loops", "not before Linux 6.9: bounded loops, about a second more to start"
    )


def _task_storage() -> Check:
    if kernel_has_task_storage():
        return Check(OK, "task storage", "a thread's syscall state hangs off the thread")
    why = (
        "no BTF"
        if not KERNEL_BTF.exists()
        else "its helpers not usable by tracepoint programs (or not probed: no privilege)"
    )
    return Check(
        INFO,
        "task storage",
        f"{why}: a thread's syscall state is kept in an LRU hash (a key hashed three times a send)",
    )


def _goroutines() -> Check:
    missing = task_registers_missing()
    if missing is None:
        return Check(OK, "Go goroutine context", "Go 1.18+ programs' goroutines are followed")
    return Check(WARN, "Go goroutine context", f"not here: {missing}")


def _asyncio_tasks() -> Iterator[Check]:
    """The host's Pythons whose `_asyncio` cannot be probed (a stripped module
    without its debug file): their asyncio programs get no task context."""
    modules = sorted(glob.glob("/usr/lib/python3*/lib-dynload/_asyncio.cpython-*.so"))
    modules += sorted(glob.glob("/usr/local/lib/python3*/lib-dynload/_asyncio.cpython-*.so"))
    for module in modules:
        probes, why = probes_of(module)
        if probes:
            yield Check(OK, "asyncio task context", f"{module}: task functions found")
        else:
            yield Check(WARN, "asyncio task context", f"{module}: {why}")


def _tracefs() -> Check:
    if (TRACEFS / "events").is_dir():
        return Check(OK, "tracefs", f"mounted at {TRACEFS}")
    return Check(FAIL, "tracefs", f"not mounted: mount -t tracefs nodev {TRACEFS}")


def _tracepoints() -> Iterator[Check]:
    for tp in REQUIRED_TRACEPOINTS:
        if tracepoint_exists(tp):
            yield Check(OK, f"tracepoint {tp}", "present")
        else:
            yield Check(FAIL, f"tracepoint {tp}", "missing: payload capture needs it")
    for name, _ in OPTIONAL_PLAIN_SYSCALLS:
        tp = f"syscalls/sys_enter_{name}"
        state = (
            "present, used"
            if tracepoint_exists(tp)
            else "absent (this architecture routes it via sendto/recvfrom)"
        )
        yield Check(INFO, f"tracepoint {tp}", state)


def _event_source(name: str, what: str, absent_means: str = "") -> Check:
    """A perf event source; `absent_means`: what is lost without it ("" = not used)."""
    if Path(f"/sys/bus/event_source/devices/{name}").exists():
        return Check(OK if absent_means else INFO, what, "available")
    if absent_means:
        return Check(WARN, what, f"not available: {absent_means}")
    return Check(INFO, what, "not available (optional, not used)")


def _tls() -> Iterator[Check]:
    """Which libssl files HTTPS plaintext is read from, and which processes with TCP
    sockets use a TLS stack the uprobes cannot read."""
    libraries = host_libraries()
    yield Check(
        OK if libraries else WARN,
        "TLS: OpenSSL",
        "; ".join(f"{path} ({placement(openssl_probes(path))})" for path in libraries)
        or "no libssl.so in the host's library directories",
    )
    pids = sorted({c.pid for c in psutil.net_connections(kind="tcp") if c.pid})
    for pid in pids:
        stack = other_tls_stack(pid)
        if stack is not None:
            name = psutil.Process(pid).name() if psutil.pid_exists(pid) else "?"
            yield Check(INFO, f"TLS not visible: pid {pid} ({name})", stack)


def _perf_events() -> Check:
    ok, err = _perf_event_open()
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid")
    level = paranoid.read_text().strip() if paranoid.exists() else "?"
    if ok:
        return Check(OK, "perf events", f"perf_event_open works (perf_event_paranoid={level})")
    return Check(
        FAIL,
        "perf events",
        f"perf_event_open: {err} (perf_event_paranoid={level}); needs CAP_PERFMON",
    )


def _kernel_headers() -> Check:
    release = platform.release()
    build = Path(f"/lib/modules/{release}/build")
    if not build.exists():
        return Check(
            FAIL,
            "kernel headers",
            f"{build} missing: run scripts/setup.sh (links Debian's headers)",
        )
    target = build.resolve()
    if release in target.name:
        return Check(OK, "kernel headers", f"{build} -> {target}")
    return Check(
        WARN,
        "kernel headers",
        f"{build} -> {target}: headers of another version, linked by the set-up; "
        "fine for tracepoint programs, which read only tracepoint fields",
    )


def _lockdown() -> Check:
    path = Path("/sys/kernel/security/lockdown")
    if not path.exists():
        return Check(INFO, "lockdown", "not reported by this kernel")
    text = path.read_text().strip()
    mode = text[text.find("[") + 1 : text.find("]")] if "[" in text else text
    status = OK if mode in ("none", "integrity") else WARN
    return Check(status, "lockdown", f"{mode} (bpf_probe_write_user is never used)")


def _bcc() -> Check:
    try:
        import bcc

        return Check(OK, "bcc", f"importable ({Path(bcc.__file__).parent})")
    except ImportError:
        return Check(
            FAIL, "bcc", "not importable: run scripts/setup.sh (Debian package python3-bpfcc)"
        )


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """libbpf prints a refused load straight to fd 2; the check's line says it better."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _fentry() -> Check:
    try:
        from bcc import BPF

        with _stderr_silenced():
            prog = BPF(text="KFUNC_PROBE(do_nanosleep) { return 0; }")
        prog.cleanup()
        return Check(INFO, "fentry/fexit", "available (optional, not used)")
    except Exception:
        return Check(INFO, "fentry/fexit", "refused by this kernel (optional, not used)")


def _program_load() -> Iterator[Check]:
    receiver = SocketReceiver(lambda _e: None)
    try:
        receiver.start()
    except ReceiverError as exc:
        yield Check(FAIL, "socket receiver", str(exc))
        return
    finally:
        receiver.close()
    yield Check(OK, "socket receiver", "compiled, loaded and attached")
    counted = ", ".join(receiver.counted_in_kernel) or "nothing"
    if not receiver.not_counted_in_kernel:
        yield Check(OK, "counted in the kernel", f"{counted} (exact RED, the span budget)")
        return
    refused = "; ".join(f"{what}: {why}" for what, why in receiver.not_counted_in_kernel.items())
    yield Check(
        WARN,
        "counted in the kernel",
        f"{counted}; not {refused} (those are counted from spans, every one captured)",
    )


def _program_cache() -> Check:
    """Where compiled programs are kept (the collector's default or the variable)."""
    directory = os.environ.get("OTEL_EBPF_PROGRAM_CACHE", DEFAULT_PROGRAM_CACHE)
    if not directory:
        return Check(INFO, "program cache", "off (OTEL_EBPF_PROGRAM_CACHE=): every start compiles")
    problem = directory_problem(directory)
    if problem:
        return Check(
            WARN,
            "program cache",
            f"{problem}: every start compiles (a few seconds); give the collector a"
            " directory of its own there, or set OTEL_EBPF_PROGRAM_CACHE",
        )
    if not Path(directory).exists():
        return Check(OK, "program cache", f"{directory}: made at the first start, for restarts")
    return Check(
        OK, "program cache", f"{directory}: {kept(directory)} compiled programs kept for restarts"
    )


# The collector's resident size at work (92-100 MiB measured idle and after a
# saturating run): a memory limiter's soft limit below it refuses apps' spans
# from the start.
RESIDENT_AT_WORK_MIB = 128


def _memory(cgroup_limit: Callable[[], int | None] = cgroup_memory_limit) -> Check:
    """What the default memory limiter (80 % less 20 % of the cgroup's limit)
    leaves apps' OTLP spans."""
    limit = cgroup_limit()
    limiter = MemoryLimiter.from_config(MemoryLimiterConfig(), available=lambda: limit)
    soft = limiter.soft_limit // MIB
    detail = (
        f"{limiter.basis}: the default memory limiter refuses apps' OTLP spans above {soft} MiB"
    )
    if limit is None:
        return Check(INFO, "memory limit", f"no cgroup limit; {detail}")
    if soft < RESIDENT_AT_WORK_MIB:
        return Check(
            WARN,
            "memory limit",
            f"{detail}, less than the collector uses at work (about {RESIDENT_AT_WORK_MIB} MiB):"
            " raise the limit (512 MiB as shipped) or set processors.memory_limiter.limit_mib",
        )
    return Check(OK, "memory limit", detail)


def _event_path() -> Check:
    """Whether the modules every event goes through run compiled (native.py)."""
    for name in native.HOT_PATH:
        importlib.import_module(name)
    state = native.status()
    if state.startswith("compiled"):
        return Check(OK, "event path", state)
    return Check(
        WARN,
        "event path",
        f"{state}: about 2x the CPU per traced request; setup compiles it"
        " (gcc, the Python headers, mypy)",
    )


CHECKS: list[Callable[[], Check | Iterator[Check]]] = [
    _privileges,
    lambda: Check(INFO, "kernel", f"{platform.system()} {platform.release()} {platform.machine()}"),
    _bpf_syscall,
    _ring_buffer,
    _btf,
    _may_goto_loops,
    _task_storage,
    _lockdown,
    _tracefs,
    _tracepoints,
    lambda: _event_source(
        "uprobe",
        "uprobes",
        "HTTPS plaintext (OpenSSL), Go goroutines, asyncio tasks and Node callbacks are not read",
    ),
    _goroutines,
    _asyncio_tasks,
    _tls,
    lambda: _event_source("kprobe", "kprobes"),
    _fentry,
    _perf_events,
    _kernel_headers,
    _bcc,
    _program_load,
    _program_cache,
    _memory,
    _event_path,
]


def run_checks() -> list[Check]:
    results: list[Check] = []
    privileged = not missing_capabilities()
    for check in CHECKS:
        if not privileged and check in (_fentry, _program_load):
            results.append(
                Check(
                    FAIL,
                    "socket receiver" if check is _program_load else "fentry/fexit",
                    "skipped: needs the privileges above",
                )
            )
            continue
        try:
            out = check()
            results.extend([out] if isinstance(out, Check) else list(out))
        except OSError as exc:  # tracefs and /proc refuse an unprivileged reader
            name = getattr(check, "__name__", "check").strip("_<>").replace("_", " ")
            where = f" ({exc.filename})" if exc.filename else ""
            hint = ": run as root" if not privileged else ""
            results.append(Check(FAIL, name, f"cannot tell: {exc.strerror}{where}{hint}"))
    return results


def report(results: list[Check]) -> str:
    width = max(len(c.name) for c in results)
    lines = [f"{c.status:<5} {c.name:<{width}}  {c.detail}" for c in results]
    fails = sum(c.status == FAIL for c in results)
    warns = sum(c.status == WARN for c in results)
    verdict = "ready to run" if not fails else "cannot run until the FAIL lines are fixed"
    lines.append(f"summary: {fails} failed, {warns} warnings: {verdict}")
    return "\n".join(lines)
