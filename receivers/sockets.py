"""eBPF socket receiver: loads bpf/sockets.bpf.c with bcc, decodes ring buffer events.

Only tracepoints are used (see the program's header comment for why and how).
Decoding is a `struct.unpack_from` per event into a NamedTuple: the one
allocation per event the rest of the pipeline needs anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import logging
import mmap
import os
import platform
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Final

from otel_ebpf.memory import release_compiler_memory
from otel_ebpf.metrics import HTTP_BUCKETS, KERNEL_BUCKETS
from otel_ebpf.model import (
    TLS_STREAM,
    ConnClose,
    ConnCounters,
    ConnOpen,
    DataEvent,
    DatagramEvent,
    Direction,
    Endpoint,
    GoroutineLink,
    KernelEvent,
    OutlierExchange,
    ProcessExec,
    RedCount,
    ResetSent,
    Role,
    SelfConn,
    SocketBufferSet,
)
from otel_ebpf.receivers.asyncio_tasks import Uprobe
from otel_ebpf.receivers.base_types import ReceiverError, RedKey
from otel_ebpf.receivers.map_batches import MapBatches
from otel_ebpf.receivers.openssl_probes import OpenSslProbe, openssl_probes, placement
from otel_ebpf.receivers.pg_names import PgNames
from otel_ebpf.receivers.program_cache import compile_or_load, kernel_has_helper, load_together
from otel_ebpf.receivers.ringbuf import ORDERED_LOADS, RingBufferReader
from otel_ebpf.receivers.spare_ring import SpareRecords

log = logging.getLogger(__name__)

TRACEFS: Final = Path("/sys/kernel/tracing")
DRAIN_BATCH = 4096  # records handed on per poll: the loop's other work runs between

# Tracepoints the program attaches to; `doctor` checks the same list.
REQUIRED_TRACEPOINTS: Final = (
    "sock/sock_send_length",
    "sock/sock_recv_length",
    "sock/inet_sock_set_state",
    *(
        f"syscalls/sys_{edge}_{name}"
        for name in (
            "read",
            "write",
            "readv",
            "writev",
            "recvfrom",
            "sendto",
            "recvmsg",
            "sendmsg",
            "sendfile64",
            "sendmmsg",
            "recvmmsg",
        )
        for edge in ("enter", "exit")
    ),
    "syscalls/sys_enter_connect",
    "syscalls/sys_exit_socket",
    "syscalls/sys_exit_accept",
    "syscalls/sys_exit_accept4",
    "syscalls/sys_enter_setsockopt",
    "sched/sched_process_exit",
    "sched/sched_process_exec",
    "sched/sched_process_fork",
    "syscalls/sys_enter_execve",
    "syscalls/sys_enter_execveat",
    "tcp/tcp_retransmit_skb",
    "tcp/tcp_receive_reset",
    "tcp/tcp_send_reset",
)
# send/recv exist as syscalls on some architectures only (not on x86_64).
OPTIONAL_PLAIN_SYSCALLS: Final = (("send", "buff"), ("recv", "ubuf"))

_EV_DATA: Final = 1
_EV_OPEN: Final = 2
_EV_CLOSE: Final = 3
_EV_SELF: Final = 4
_EV_DGRAM: Final = 5
_EV_RESET: Final = 6
_EV_SOCKOPT: Final = 7
_EV_OUTLIER: Final = 8
_EV_EXEC: Final = 9
_EXEC: Final = struct.Struct("<B3xI")
_SOCKOPT: Final = struct.Struct("<B3xIIiqQ16s")
_FACT_NODELAY_SET, _FACT_NODELAY_ON, _FACT_FRESH = 2, 4, 8  # socket_facts bits
_SOCKET_OPTIONS: Final = {
    7: "SO_SNDBUF",
    8: "SO_RCVBUF",
    32: "SO_SNDBUFFORCE",
    33: "SO_RCVBUFFORCE",
}
# The program's files, in the order they are compiled as one unit.
PROGRAM_FILES: Final = ("go.bpf.c", "asyncio.bpf.c", "node.bpf.c", "sockets.bpf.c", "tls.bpf.c")
# peer, TCP counters, tls, send wait, small-window segments, retransmit stamp,
# budget, goroutine, task (asyncio's, or a Node callback) and its cause
_DATA_HEADER: Final = struct.Struct("<BBBBIIIQQQQQII16sHH16sIIBBBxIII4xQQQQQQ")
# The same header as an EV_DATA record is read: its kind and the datagram peer skipped.
_unpack_data: Final = struct.Struct("<xBBBIIIQQQQQII16s20xIIBBBxIII4xQQQQQQ").unpack_from
_DATA_START: Final = _DATA_HEADER.size
_CONN: Final = struct.Struct("<BBHIQQQQHH16s16s4xQIIBBB5x")
_TCP_SYN_SENT: Final = 2
_AF_INET: Final = 2
_DIRECTIONS: Final = tuple(Direction)
_ROLES: Final = tuple(Role)


def _text(raw: Any) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("latin-1")


_RED_HTTP, _RED_REDIS = 0, 1  # struct red_key's proto
_RED_PG: Final = 2
_DB_FAILED: Final = 2  # and its status for a database's error
_PG_COUNTED: Final = struct.Struct("<QI")  # struct pg_counted: fingerprint, database id


def _red_head(
    key: Any, names: PgNames | None = None
) -> tuple[int, bytes, Role, int, str, str, str, str, str, int, bool, str, str]:
    """A kernel `struct red_key`'s fields, decoded (bcc's ctypes or a record's);
    `names` names a PostgreSQL statement (else it goes unnamed)."""
    client = key.role == Role.CLIENT
    peer = _address(bytes(key.peer), key.family) if client else ""
    head = (key.tgid, bytes(key.comm), _ROLES[key.role], key.port)
    failed = key.status == _DB_FAILED
    if key.proto == _RED_REDIS:  # the command's name in path, an error's code in host
        error = (_text(key.host) or "ERR") if failed else ""
        name = _text(key.path).upper()
        return (*head, name, "", "", peer, "", key.status, bool(key.tls), "redis", error)
    if key.proto == _RED_PG:  # struct pg_counted in path (binary), a SQLSTATE in host
        fingerprint, database = _PG_COUNTED.unpack_from(bytes(key), type(key).path.offset)
        operation, table = names.statement(fingerprint) if names else ("", "")
        namespace = names.database(database) if names else ""
        error = (_text(key.host) or "XX000") if failed else ""
        return (
            *head,
            operation,
            table,
            namespace,
            peer,
            "",
            key.status,
            bool(key.tls),
            "postgresql",
            error,
        )
    version = key.version.decode("latin-1")  # a char: '0', '1', or NUL (not seen)
    return (
        *head,
        _text(key.method),
        _text(key.path),
        _text(key.host).strip() if client else "",
        peer,
        f"1.{version}" if version in ("0", "1") else "",
        key.status,
        bool(key.tls),
        "http",
        "",
    )


_OUTLIER: Final = struct.Struct("<B7xQQQ")


def _outlier(raw: bytes, names: PgNames | None) -> OutlierExchange | None:
    if len(raw) < _OUTLIER.size + ctypes.sizeof(RedKey):
        return None
    _, sk, start, end = _OUTLIER.unpack_from(raw)
    key = RedKey.from_buffer_copy(raw, _OUTLIER.size)
    if key.role not in (Role.CLIENT, Role.SERVER):
        return None
    return OutlierExchange(sk, start, end, *_red_head(key, names))


def _red_count(key: Any, value: Any, names: PgNames | None = None) -> RedCount:
    bounds = HTTP_BUCKETS if key.proto == _RED_HTTP else KERNEL_BUCKETS
    buckets = tuple(value.buckets)[: len(bounds) + 1]
    return RedCount(
        *_red_head(key, names),
        value.count,
        value.sum_ns,
        value.min_ns,
        value.max_ns,
        buckets,
    )


def _conn_counters(entries: Iterable[tuple[Any, Any]]) -> list[ConnCounters]:
    """The connection table's entries as TCP health reads them (own and
    undecided connections left out)."""
    out = []
    for key, cs in entries:
        if cs.self or not cs.role:
            continue
        out.append(
            ConnCounters(
                key.value if hasattr(key, "value") else int(key),
                cs.gen,
                cs.pid,
                _ROLES[cs.role],
                cs.bytes[0],
                cs.bytes[1],
                cs.retrans,
                cs.resets_in,
                cs.resets_out,
            )
        )
    return out


@functools.lru_cache(maxsize=4096)
def _address(raw: bytes, family: int) -> str:
    """An address as text; remembered, as a node's peers are few and every
    connection's open and close name two."""
    if family == _AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped IPv6
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


def decode(raw: bytes, names: PgNames | None = None) -> KernelEvent | None:
    """One ring buffer record -> typed event (None for an unknown kind); `names`
    names the PostgreSQL statements the kernel counts."""
    kind = raw[0]
    if kind == _EV_DATA:
        (
            d,
            role,
            has_payload,
            pid,
            tid,
            fd,
            sk,
            gen,
            ts,
            off,
            cap_off,
            length,
            captured,
            comm,
            retransmits,
            srtt_us,
            tls,
            red_counted,
            after_shed,
            send_wait_us,
            window_small,
            retransmit_stamp,
            rand,
            threshold,
            go_owner,
            go_until,
            task,
            task_cause,
        ) = _unpack_data(raw)
        payload = raw[_DATA_START : _DATA_START + captured] if has_payload else b""
        goroutine = GoroutineLink(go_owner, go_until) if go_owner else None
        return DataEvent(
            sk | TLS_STREAM if tls else sk,
            gen,
            _DIRECTIONS[d],
            _ROLES[role],
            pid,
            tid,
            fd,
            ts,
            off,
            length,
            cap_off,
            payload,
            comm,
            retransmits,
            srtt_us,
            send_wait_us * 1000,
            window_small,
            bool(red_counted),
            bool(after_shed),
            rand,
            threshold,
            goroutine,
            task,
            task_cause,
            retransmit_stamp,
        )
    if kind == _EV_EXEC:
        return ProcessExec(_EXEC.unpack_from(raw)[1])
    if kind == _EV_DGRAM:
        fields = _DATA_HEADER.unpack_from(raw)
        family, port, addr = fields[15:18]
        start = _DATA_HEADER.size
        peer = Endpoint(_address(addr, family), port)
        return DatagramEvent(
            fields[7],
            _DIRECTIONS[fields[1]],
            fields[4],
            fields[5],
            fields[6],
            fields[9],
            fields[12],
            raw[start : start + fields[13]],
            fields[14],
            peer,
            family != _AF_INET,
        )
    if kind in (_EV_OPEN, _EV_CLOSE, _EV_RESET):
        (
            _,
            role,
            family,
            pid,
            sk,
            ts,
            b_out,
            b_in,
            sport,
            dport,
            saddr,
            daddr,
            opened,
            retrans,
            srtt,
            resets_in,
            resets_out,
            oldstate,
        ) = _CONN.unpack_from(raw)
        local = Endpoint(_address(saddr, family), sport)
        remote = Endpoint(_address(daddr, family), dport)
        if kind == _EV_RESET:
            return ResetSent(sk, ts, pid, local, remote)
        if kind == _EV_CLOSE:
            return ConnClose(
                sk,
                ts,
                b_out,
                b_in,
                _ROLES[role],
                pid,
                local,
                remote,
                opened,
                retrans,
                srtt,
                resets_in,
                resets_out,
                oldstate == _TCP_SYN_SENT,
            )
        ipv6 = family != _AF_INET and ":" in local.address
        return ConnOpen(sk, ts, Role(role), pid, local, remote, ipv6)
    if kind == _EV_SOCKOPT:
        _, pid, fd, optname, value, ts, comm = _SOCKOPT.unpack_from(raw)
        return SocketBufferSet(pid, fd, _SOCKET_OPTIONS.get(optname, str(optname)), value, ts, comm)
    if kind == _EV_SELF:
        return SelfConn(_CONN.unpack_from(raw)[4])
    if kind == _EV_OUTLIER:
        return _outlier(raw, names)
    return None


def tracepoint_exists(name: str) -> bool:
    return (TRACEFS / "events" / name / "id").exists()


def tracepoint_has_field(name: str, field: str) -> bool:
    try:
        text = (TRACEFS / "events" / name / "format").read_text()
    except OSError:
        return False
    return f" {field};" in text


KERNEL_BTF: Final = Path("/sys/kernel/btf/vmlinux")


def task_registers_missing() -> str | None:
    """Why the programs cannot read a task's saved user registers on this machine
    (None: they can, through bpf_task_pt_regs: BTF, Linux 5.15, amd64). bpf/go.bpf.c
    reads Go's g register from them, and the transfer probes the arguments of
    read, readv, recvfrom and recvmsg, which then need no probes of their own."""
    if platform.machine() != "x86_64":
        return f"{platform.machine()} (amd64 only)"
    if not KERNEL_BTF.exists():
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if not _linux_at_least(5, 15):
        return f"Linux {platform.release()} (5.15 or later)"
    return None


def kernel_has_may_goto() -> bool:
    """Whether the verifier takes may_goto loops (Linux 6.9): the programs' loops
    are then checked until their state settles, not once per pass (bpf/sockets.bpf.c,
    PASSES, whose instruction bytes are laid out little-endian); bounded loops
    where not."""
    return sys.byteorder == "little" and _linux_at_least(6, 9)


_PROG_TYPE_TRACEPOINT: Final = 5  # include/uapi/linux/bpf.h
_TASK_STORAGE_HELPERS: Final = (156, 158)  # task_storage_get, get_current_task_btf


def kernel_has_task_storage(btf: Path = KERNEL_BTF) -> bool:
    """Whether programs can keep a thread's state in task storage: the kernel's
    `btf`, and tracepoint programs allowed its helpers (probed, not read from
    the release: which program types may call them has changed since 5.11, and
    distributions backport). bpf/sockets.bpf.c's active_io then hangs off the
    thread, with no key hashed per send; an LRU hash where not."""
    return btf.exists() and all(
        kernel_has_helper(_PROG_TYPE_TRACEPOINT, helper) for helper in _TASK_STORAGE_HELPERS
    )


def _linux_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", platform.release())
    return found is not None and (int(found.group(1)), int(found.group(2))) >= (major, minor)


# Receives whose arguments the transfer probes read from the caller's registers
# where they can (bpf/sockets.bpf.c, receive_io): their syscalls are not probed.
RECEIVES_FROM_REGISTERS: Final = ("read", "readv", "recvfrom", "recvmsg")
# Syscalls whose end the transfer probes tell from the same registers (current_io,
# SYSCALL_EXIT): only their entries are probed. sendfile's exit stays.
ENDED_BY_REGISTERS: Final = ("write", "sendto", "writev", "sendmsg", "sendmmsg", "recvmmsg")


def attached_tracepoints() -> tuple[str, ...]:
    """The tracepoints the socket program attaches on this machine."""
    if task_registers_missing():
        return REQUIRED_TRACEPOINTS
    unhooked = {
        f"syscalls/sys_{edge}_{name}"
        for name in RECEIVES_FROM_REGISTERS
        for edge in ("enter", "exit")
    } | {f"syscalls/sys_exit_{name}" for name in ENDED_BY_REGISTERS}
    return tuple(tp for tp in REQUIRED_TRACEPOINTS if tp not in unhooked)


def program_source() -> str:
    """The socket program, its goroutine context before it and the OpenSSL uprobes
    after it (one unit: shared maps and events)."""
    bpf = resources.files("otel_ebpf.bpf")
    return "".join(bpf.joinpath(name).read_text() for name in PROGRAM_FILES)


def _own_pid(bpf: Any) -> None:
    """The program leaves the collector's own sockets alone once told its pid."""
    bpf["self_tgid"][ctypes.c_int(0)] = ctypes.c_uint(os.getpid())


# Tail-called by the transfer probes and the OpenSSL uprobes (bpf/sockets.bpf.c,
# count_and_send), a pair each: a tracepoint's kind of program, then a uprobe's
# (a tail call stays within its kind), at this index of their tables. The
# database ones are reached through the HTTP/1 pair.
_COUNTERS: Final = (
    ("HTTP/1 requests", "red_and_send", "red_and_send_tls", 0),
    ("Redis commands", "red_and_send_redis", "red_and_send_tls_redis", 1),
    ("PostgreSQL queries", "red_and_send_pg", "red_and_send_tls_pg", 2),
)


def _load_counters(bpf: Any) -> tuple[list[str], dict[str, str]]:
    """The programs that count requests in the kernel and shed them for the span
    budget: what they count, and why not the rest. One that the kernel refuses
    leaves its requests to be counted from their spans (all of them captured),
    and says so."""
    from bcc import BPF

    load_together(
        bpf,
        [
            (program, kind)
            for _, name, tls_name, _ in _COUNTERS
            for program, kind in ((name, BPF.TRACEPOINT), (tls_name, BPF.KPROBE))
        ],
    )
    counted: list[str] = []
    refused: dict[str, str] = {}
    for what, name, tls_name, index in _COUNTERS:
        if _COUNTERS[0][0] in refused:
            refused[what] = "reached through the programs refused"
            continue
        try:
            for program, kind, table in (
                (name, BPF.TRACEPOINT, "red_progs"),
                (tls_name, BPF.KPROBE, "red_tls_progs"),
            ):
                counter = bpf.load_func(program, kind)
                bpf[table][ctypes.c_int(index)] = ctypes.c_int(counter.fd)
            counted.append(what)
        except Exception as exc:  # bcc raises bare Exception on load errors
            refused[what] = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            log.warning("%s are not counted in the kernel (%s)", what, refused[what])
    if _COUNTERS[0][0] in counted:  # the transfer probes count HTTP/1 requests too
        bpf["http_counted"][ctypes.c_int(0)] = ctypes.c_uint(1)
    return counted, refused


def _pg_text(table: Any, fingerprint: int) -> bytes | None:
    """The text the kernel kept of a PostgreSQL statement's fingerprint."""
    try:
        kept = table[table.Key(fingerprint)]
    except KeyError:
        return None
    return bytes(kept.text)[: kept.len]


def _pg_database(table: Any, ident: int) -> bytes | None:
    """The name of a PostgreSQL database the kernel read in a start-up message."""
    try:
        return bytes(table[table.Key(ident)].name)
    except KeyError:
        return None


def _detach(probe: tuple[Callable[[Any], None], Any]) -> None:
    detach, name = probe
    try:
        detach(name)
    except Exception as exc:  # gone already; the process's exit closes what is left
        log.debug("detaching %s: %s", name, exc)


class SocketReceiver:
    """Owns the loaded program; `poll` delivers decoded events to `sink`."""

    _ONE = ctypes.c_int(1)

    def __init__(
        self,
        sink: Callable[[KernelEvent], None],
        capture_bytes: int = 1024,
        ring_buffer_pages: int = 2048,
        max_connections: int = 65536,
        dns_ports: Iterable[int] = (53,),
        count_http: bool = True,
        serving_threads: bool = False,
        program_cache: str = "",
        may_goto: bool | None = None,
        task_storage: bool | None = None,
    ) -> None:
        """`count_http`: count HTTP/1 requests in the kernel (for a metrics pipeline,
        and for the span budget, which decides at the requests it counts).
        `serving_threads`: keep which thread reads which HTTP/1 request (for the
        CPU profiler's span tie-in; needs `count_http`). `program_cache`: the
        directory compiled programs are kept in ("": compile at every start).
        `may_goto`: the programs' loops as may_goto loops (None: where the kernel
        has them; False: bounded loops, as older kernels need). `task_storage`: a
        thread's syscall state in task storage (None: where the kernel has it;
        False: an LRU hash, as older kernels need)."""
        if capture_bytes & (capture_bytes - 1) or not 64 <= capture_bytes <= 4096:
            raise ValueError("capture_bytes must be a power of two from 64 to 4096")
        self._sink = sink
        self.capture_bytes = capture_bytes
        self._ring_pages = ring_buffer_pages
        self._max_conns = max_connections
        self._dns_ports = sorted({int(p) for p in dns_ports if 0 < int(p) < 65536})
        self._count_http = count_http
        self._serving_threads = serving_threads and count_http
        self._program_cache = program_cache
        self._may_goto = kernel_has_may_goto() if may_goto is None else may_goto
        self._task_storage = kernel_has_task_storage() if task_storage is None else task_storage
        # What the kernel counts (RED, the span budget), and why not for the rest.
        self.counted_in_kernel: list[str] = []
        self.not_counted_in_kernel: dict[str, str] = {}
        self._bpf: object | None = None
        self._quiet: object | None = None
        self._quiet_writes: object | None = None
        self._quiet_write_numbers = itertools.count(1)  # next() is atomic: one number a write
        self._reader: RingBufferReader | None = None
        self._spare: RingBufferReader | None = None  # the spare ring (see ring_output)
        self._spare_records = SpareRecords()  # read from it, not yet handed on
        self._lookup: Any = None  # libbcc's bpf_lookup_elem, keeping the GIL
        self._conn_fds: tuple[int, ...] = ()
        self._conn_key = ctypes.c_ulonglong()
        self._conn_leaf: Any = None
        self._conn_batches: MapBatches | None = None  # the TCP health scan's reader
        # bpf's retransmits_total, mapped (x86-64: see ringbuf.ORDERED_LOADS)
        self._retransmits_total: mmap.mmap | None = None
        self._retransmits_now: memoryview | None = None
        self.pg_names: PgNames | None = None
        self.events_received = 0
        self._ring_fill: Any = None  # told how far reads got (watch_ring)
        self._openssl: dict[str, list[OpenSslProbe]] = {}  # path -> the probes attached

    def exec_service_name(self, pid: int) -> str | None:
        """OTEL_SERVICE_NAME as the process was exec'd with, kept by the kernel after
        it exits (None: not set, not seen, or the receiver is not running)."""
        bpf = self._bpf
        if bpf is None:
            return None
        try:
            found = bpf["service_names"][ctypes.c_uint(pid)]  # type: ignore[index]
        except (KeyError, OSError):
            return None
        name = bytes(found.name).split(b"\0", 1)[0].decode(errors="replace").strip()
        return name or None

    def start(self) -> None:
        """Compile, load and attach; raises ReceiverError with a readable reason."""
        started = time.monotonic()
        if not (TRACEFS / "events").is_dir():
            raise ReceiverError(
                f"tracefs is not mounted at {TRACEFS} (mount -t tracefs nodev {TRACEFS})"
            )
        missing = [tp for tp in REQUIRED_TRACEPOINTS if not tracepoint_exists(tp)]
        if missing:
            raise ReceiverError(
                f"the kernel lacks tracepoints {', '.join(missing)}; "
                "run `otel-ebpf doctor` for details"
            )
        try:
            from bcc.libbcc import lib
        except ImportError as exc:
            raise ReceiverError(
                "the bcc Python package is not importable; run scripts/setup.sh "
                "(Debian package python3-bpfcc)"
            ) from exc
        optional = " ".join(
            f"PLAIN_IO({name}, {field})"
            for name, field in OPTIONAL_PLAIN_SYSCALLS
            if tracepoint_exists(f"syscalls/sys_enter_{name}")
        )
        cflags = [
            f"-DCAPTURE_BYTES={self.capture_bytes}",
            f"-DRINGBUF_PAGES={self._ring_pages}",
            f"-DMAX_CONNS={self._max_conns}",
            # UDP is captured for DNS only: its ports, compiled in (no lookup per datagram)
            "-DIS_DNS_PORT(port)=("
            + "||".join(f"(port)=={p}" for p in self._dns_ports or [53])
            + ")",
            f"-DOPTIONAL_IO={optional}",
            "-Wno-macro-redefined",
        ]
        if self._serving_threads:
            cflags.append("-DPROFILE_TIE_IN")
        if task_registers_missing():
            cflags.append("-DNO_TASK_REGS")
        if self._may_goto:
            cflags.append("-DHAVE_MAY_GOTO")
        if self._task_storage:
            cflags.append("-DTASK_STORAGE")
        if tracepoint_has_field("tcp/tcp_probe", "skaddr"):
            cflags.append("-DHAVE_TCP_PROBE_SKADDR")  # RTT per connection (newer kernels)
        # The profiler's program shares a table with this one through bcc's
        # in-process registry, which only a compile fills: no cache then.
        cache = "" if self._serving_threads else self._program_cache
        try:
            bpf = compile_or_load(program_source(), cflags, cache, _own_pid)
        except Exception as exc:  # bcc raises bare Exception on compile/load errors
            raise ReceiverError(
                f"loading the eBPF program failed ({str(exc).strip().splitlines()[-1]}); "
                "run `otel-ebpf doctor`"
            ) from exc
        if self._count_http:
            self.counted_in_kernel, self.not_counted_in_kernel = _load_counters(bpf)
        try:
            bpf.attach_tracepoint(tp="tcp:tcp_send_reset", fn_name="on_tcp_send_reset")
        except Exception as exc:  # resets sent go uncounted; everything else works
            log.warning("tcp:tcp_send_reset not attached (%s): resets sent are not counted", exc)
        conns = bpf["conns"]
        self._conn_fds = (conns.map_fd, bpf["closed_conns"].map_fd)
        self._conn_leaf = conns.Leaf()  # both maps hold struct conn_state
        self._conn_batches = MapBatches(lib._name, conns.map_fd, conns.Key, conns.Leaf)
        # A lookup is a ~1 us syscall: made holding the GIL (bcc's ctypes call lets
        # it go, and taking it back waits out the export thread's switch interval).
        self._lookup = ctypes.PyDLL(lib._name).bpf_lookup_elem
        self._lookup.restype = ctypes.c_int
        self._lookup.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        events, spare = bpf["events"], bpf["spare_events"]
        if ORDERED_LOADS:  # maps read as memory: loads must stay in order
            try:
                self._retransmits_total = mmap.mmap(
                    bpf["retransmits_total"].map_fd, mmap.PAGESIZE, prot=mmap.PROT_READ
                )
                self._retransmits_now = memoryview(self._retransmits_total).cast("Q")
            except (OSError, ValueError) as exc:  # asked of the map per exchange instead
                log.debug("retransmit total not mapped: %s", exc)
            try:
                self._reader = RingBufferReader(events.map_fd, events.max_entries)
                self._spare = RingBufferReader(spare.map_fd, spare.max_entries)
            except (OSError, ValueError) as exc:
                self._reader = self._spare = None
                log.info("ring buffer read through libbpf (not mapped: %s)", exc)
        if self._reader is None:  # libbpf's consumer orders its loads; a callback per record
            events.open_ring_buffer(self._on_record)
            spare.open_ring_buffer(self._on_record)
        self._bpf = bpf
        self._quiet, self._quiet_writes = bpf["quiet"], bpf["quiet_writes"]
        self.pg_names = PgNames(
            partial(_pg_text, bpf["pg_statements"]), partial(_pg_database, bpf["pg_databases"])
        )
        release_compiler_memory()  # nothing is compiled after this
        log.info(
            "socket receiver attached to %d tracepoints in %.1f s (capture %d bytes, %s)",
            len(attached_tracepoints()),
            time.monotonic() - started,
            self.capture_bytes,
            platform.release(),
        )

    def _on_record(self, _ctx: object, data: int, size: int) -> None:
        self.events_received += 1
        event = decode(ctypes.string_at(data, size), self.pg_names)
        if event is not None:
            self._sink(event)

    def poll(self) -> bool:
        """Hand what the kernel has written so far to the sink, at most DRAIN_BATCH
        records (the programs submit without waking anyone: the caller drains on
        a timer). True: more may be waiting."""
        if self._bpf is None:
            return False
        if self._reader is None:
            self._bpf.ring_buffer_consume()  # type: ignore[attr-defined]
            return False
        reader, spare, names = self._reader, self._spare_records, self.pg_names
        if self._spare is not None:  # records the main ring refused (rare): read first
            retried = self._spare.drain(DRAIN_BATCH)
            if retried:
                self.events_received += len(retried)
                spare.add([e for e in (decode(raw, names) for raw in retried) if e is not None])
        records = reader.drain(DRAIN_BATCH)
        self.events_received += len(records)
        if self._ring_fill is not None and records:
            self._ring_fill[self._ONE] = ctypes.c_ulonglong(reader.consumed())
        sink = self._sink
        interleave = bool(spare)  # asked once: records are many, spare ones rare
        for raw in records:
            event = decode(raw, names)
            if event is not None:
                if interleave:
                    for earlier in spare.written_before(event):
                        sink(earlier)
                    interleave = bool(spare)
                sink(event)
        more = len(records) == DRAIN_BATCH
        if spare and not more:
            for later in spare.take_all():
                sink(later)
        return more

    def drain(self, within_s: float = 1.0) -> None:
        """What is written so far, at shutdown; bounded in time, as traffic that
        outpaces the collector would keep the ring from ever emptying."""
        deadline = time.monotonic() + within_s
        while self.poll() and time.monotonic() < deadline:
            pass
        for event in self._spare_records.take_all():  # read, so handed on
            self._sink(event)

    def events_lost(self) -> int:
        return self._lost_counter(0)

    def events_retried(self) -> int:
        """Records written at a second try (the first reservation failed)."""
        return self._lost_counter(1)

    def _lost_counter(self, index: int) -> int:
        if self._bpf is None:
            return 0
        table = self._bpf["lost"]  # type: ignore[index]
        return int(table.sum(table.Key(index)).value)

    def take_red_counts(self) -> list[RedCount]:
        """HTTP/1 server requests the kernel counted since the last call. The kernel
        counts into one map while this drains the other, then they swap: what a
        call returns was counted up to the call before it (nothing being written)."""
        if self._bpf is None:
            return []
        bpf = self._bpf
        active_table = bpf["red_active"]  # type: ignore[index]
        active = active_table[0].value
        idle = bpf["red_b" if active == 0 else "red_a"]  # type: ignore[index]
        counts = [_red_count(key, value, self.pg_names) for key, value in idle.items()]
        idle.clear()
        active_table[0] = ctypes.c_uint(1 - active)
        return counts

    def own_port(self, port: int) -> None:
        """A port the collector listens on: its clients' requests are not counted
        in the kernel (their spans are not made either)."""
        if self._bpf is not None:
            self._bpf["own_ports"][ctypes.c_ushort(port)] = ctypes.c_ubyte(1)  # type: ignore[index]

    def set_span_threshold(self, threshold: int) -> None:
        """The span budget's threshold: HTTP/1 requests whose random value is
        below it are shed in the kernel (0: every request is captured)."""
        if self._bpf is not None:
            table = self._bpf["span_budget"]  # type: ignore[index]
            table[ctypes.c_int(0)] = ctypes.c_ulonglong(threshold)

    def keep_slower_than(self, seconds: float) -> None:
        """A shed request this slow still gets a span (as a failed one does); 0: never."""
        if self._bpf is not None:
            table = self._bpf["span_budget"]  # type: ignore[index]
            table[ctypes.c_int(1)] = ctypes.c_ulonglong(int(seconds * 1e9))

    def watch_ring(self) -> None:
        """The kernel sheds every request at its start while the ring buffer is over
        half unread, until it is down to a quarter (an adaptive budget's guard). It
        knows what it wrote; each read says how far it got (the mapped reader only)."""
        if self._bpf is not None and self._reader is not None:
            self._ring_fill = self._bpf["ring_fill"]  # type: ignore[index]
            size = self._bpf["events"].max_entries  # type: ignore[index]
            self._ring_fill[ctypes.c_int(2)] = ctypes.c_ulonglong(size)

    def shed_counts(self) -> tuple[int, int, int, int]:
        """HTTP/1 requests noted in the kernel so far; shed by the span budget's
        threshold; shed while pipelined behind a shed one (neither counted nor
        traced); shed while the ring buffer was behind."""
        if self._bpf is None:
            return (0, 0, 0, 0)
        table = self._bpf["shed_counts"]  # type: ignore[index]
        noted, shed, uncounted, backlog = (int(table.sum(table.Key(i)).value) for i in range(4))
        return noted, shed, uncounted, backlog

    def uncounted_processes(self) -> dict[int, int]:
        """Requests shed uncounted so far, by process id (the kernel keeps the
        last 256 processes that had any)."""
        if self._bpf is None:
            return {}
        table = self._bpf["uncounted_processes"]  # type: ignore[index]
        return {int(k.value): int(v.value) for k, v in table.items()}

    def red_dropped(self) -> int:
        """Requests the kernel could not count: its series map was full."""
        if self._bpf is None:
            return 0
        table = self._bpf["red_dropped"]  # type: ignore[index]
        return int(table.sum(table.Key(0)).value)

    def live_connections(self) -> list[ConnCounters]:
        """Every connection in the kernel's map with its counters (the collector's own
        left out), read in batches where the kernel supports it."""
        if self._bpf is None or self._conn_batches is None:
            return []
        try:
            return _conn_counters(self._conn_batches.entries())
        except OSError:  # batch lookups need Linux 5.6; one lookup per entry otherwise
            return _conn_counters(self._bpf["conns"].items())  # type: ignore[index]

    def tcp_nodelay(self, pid: int, fd: int) -> bool | None:
        """Whether the socket at pid's fd has Nagle off, as its setsockopt calls said;
        False for a socket made since we started that never set it; None: unknown."""
        if self._bpf is None or not fd:
            return None
        try:
            facts = self._bpf["socket_facts"][ctypes.c_ulonglong(pid << 32 | fd)].value  # type: ignore[index]
        except (KeyError, OSError):
            return None
        if facts & _FACT_NODELAY_SET:
            return bool(facts & _FACT_NODELAY_ON)
        return False if facts & _FACT_FRESH else None

    def retransmits_of(self, sk: int, gen: int, known: int, stamp: int) -> int | None:
        """A connection's retransmitted segments now (None: unknown, or reused);
        called per exchange, so into reused buffers. `known` is the count its
        last event carried with `stamp`: while the kernel's total of every
        connection's retransmits still matches the stamp, that count is current
        and no syscall is made."""
        if self._bpf is None or self._lookup is None:
            return None
        now = self._retransmits_now
        if stamp and now is not None and (now[0] + 1) & 0xFFFFFFFF == stamp:
            return known
        key, leaf, lookup = self._conn_key, self._conn_leaf, self._lookup
        key.value = sk
        for fd in self._conn_fds:
            if lookup(fd, ctypes.byref(key), ctypes.byref(leaf)) == 0:
                return int(leaf.retrans) if leaf.gen == gen else None
        return None

    def attach_openssl(self, path: str) -> int:
        """Uprobes on one libssl file (every process mapping it, now and later, is
        covered: uprobes live on the file), where the kernel emulates the probed
        instruction if the file's code shows where (openssl_probes.py). Returns
        the exported functions covered."""
        if self._bpf is None:
            return 0
        bpf: Any = self._bpf
        attached = []
        for probe in openssl_probes(path):
            try:
                bpf.attach_uprobe(name=path, fn_name=probe.enter, **probe.where())
                bpf.attach_uretprobe(name=path, fn_name=probe.exit, **probe.where())
            except Exception as exc:  # an older libssl lacks the _ex calls
                log.debug("%s: %s not probed (%s)", path, "/".join(probe.covers), exc)
                self._detach_openssl_probe(path, probe)
                continue
            attached.append(probe)
        self._openssl[path] = attached
        (log.info if any(p.traps() for p in attached) else log.debug)(
            "%s: %s", path, placement(attached)
        )
        return sum(len(p.covers) for p in attached)

    def detach_openssl(self, path: str) -> None:
        if self._bpf is None:
            return
        for probe in self._openssl.pop(path, []):
            self._detach_openssl_probe(path, probe)

    def _detach_openssl_probe(self, path: str, probe: OpenSslProbe) -> None:
        bpf: Any = self._bpf
        for detach in (bpf.detach_uprobe, bpf.detach_uretprobe):
            with contextlib.suppress(Exception):  # never attached (or the file is gone)
                detach(name=path, **probe.where())

    def attach_go(self, path: str, probes: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Uprobes (bpf/go.bpf.c) on one Go executable at its functions' addresses.
        Returns those attached."""
        if self._bpf is None:
            return []
        bpf: Any = self._bpf
        attached = []
        for address, program in probes:
            try:
                bpf.attach_uprobe(name=path, addr=address, fn_name=program)
            except Exception as exc:  # judged by the caller, which detaches the rest
                log.debug("%s: %s at %#x not probed (%s)", path, program, address, exc)
                continue
            attached.append((address, program))
        return attached

    def detach_go(self, path: str, probes: list[tuple[int, str]]) -> None:
        if self._bpf is None:
            return
        bpf: Any = self._bpf
        for address, _ in probes:
            with contextlib.suppress(Exception):  # never attached (or the file is gone)
                bpf.detach_uprobe(name=path, addr=address)

    def attach_uprobes(self, path: str, probes: list[Uprobe]) -> list[Uprobe]:
        """Uprobes (bpf/asyncio.bpf.c, bpf/node.bpf.c) on one file, in the order
        given. Returns those attached."""
        if self._bpf is None:
            return []
        bpf: Any = self._bpf
        attached = []
        for probe in probes:
            attach = bpf.attach_uretprobe if probe.on_return else bpf.attach_uprobe
            try:
                attach(name=path, addr=probe.address, fn_name=probe.program)
            except Exception as exc:  # judged by the caller, which detaches the rest
                log.debug("%s: %s at %#x not probed (%s)", path, probe.program, probe.address, exc)
                continue
            attached.append(probe)
        return attached

    def detach_uprobes(self, path: str, probes: list[Uprobe]) -> None:
        if self._bpf is None:
            return
        bpf: Any = self._bpf
        for probe in probes:
            detach = bpf.detach_uretprobe if probe.on_return else bpf.detach_uprobe
            with contextlib.suppress(Exception):  # never attached (or the file is gone)
                detach(name=path, addr=probe.address)

    def register_node(self, pid: int) -> None:
        """A process of a probed Node runtime: its reads cause its callbacks."""
        if self._bpf is None:
            return
        bpf: Any = self._bpf
        bpf["node_processes"][ctypes.c_uint(pid)] = ctypes.c_ubyte(1)
        bpf["node_registered"][ctypes.c_int(0)] = ctypes.c_uint(1)  # reads look from now on

    def register_go(self, pid: int, cookie: int) -> None:
        """A process of a probed Go executable: its calls name their goroutine."""
        if self._bpf is None:
            return
        table: Any = self._bpf["go_processes"]  # type: ignore[index]
        table[ctypes.c_uint(pid)] = ctypes.c_ulonglong(cookie)

    def set_quiet(self, sk: int, gen: int, direction: Direction, until_offset: int) -> None:
        """Tell the kernel not to send calls of this direction that end before the offset."""
        table, writes = self._quiet, self._quiet_writes
        if table is None or writes is None:
            return
        key = table.Key(sk, gen, int(direction), 0)  # type: ignore[attr-defined]
        table[key] = ctypes.c_ulonglong(until_offset)  # type: ignore[index]
        # Then counted: the kernel looks a connection up again only once this moved.
        number = next(self._quiet_write_numbers) & 0xFFFFFFFF
        writes[ctypes.c_int(0)] = ctypes.c_uint(number)  # type: ignore[index]

    def close(self) -> None:
        """Detach every probe and free the maps. Each detach waits out a grace period
        in the kernel (70-110 ms here); bcc's cleanup does ~40 of them one by one
        (3.4 s), concurrently they take about 2 s."""
        if self._bpf is not None:
            bpf: Any = self._bpf
            self._bpf = None
            self._quiet = self._quiet_writes = None
            probes = [(bpf.detach_uprobe_event, name) for name in list(bpf.uprobe_fds)]
            probes += [(bpf.detach_tracepoint, name) for name in list(bpf.tracepoint_fds)]
            with ThreadPoolExecutor(8, thread_name_prefix="detach") as pool:
                list(pool.map(_detach, probes))
            for reader in (self._reader, self._spare):
                if reader is not None:
                    reader.close()
            self._reader = self._spare = None
            if self._retransmits_now is not None and self._retransmits_total is not None:
                self._retransmits_now.release()
                self._retransmits_total.close()
            self._retransmits_now = self._retransmits_total = None
            bpf.cleanup()  # the rest: ring buffer, maps
