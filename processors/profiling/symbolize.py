"""Stack addresses to frames: ELF symbols (with separate debug files found by
build-id or debug link), the kernel's symbols and JIT perf maps.

Binaries are read through `/proc/PID/map_files` (the very file mapped, in the
process's own mount namespace, even deleted) and cached by build-id or file
identity, at most `max_binaries` of them. A process that exits mid-read just
leaves its frames unnamed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections import OrderedDict
from typing import BinaryIO, NamedTuple

from otel_ebpf.model import Frame
from otel_ebpf.processors.profiling.elf import (
    ElfInfo,
    Symbols,
    debug_file_candidates,
    file_offset_to_vaddr,
    read_info,
    read_symbols,
)
from otel_ebpf.processors.profiling.sources import (
    MAX_PERF_MAP_BYTES,
    AddressNames,
    Mapping,
    find_mapping,
    parse_kallsyms,
    parse_maps,
    parse_perf_map,
)

log = logging.getLogger(__name__)

KERNEL = "[kernel]"
JIT = "[jit]"
# Anonymous executable memory with no perf map entry: JIT code whose runtime
# writes no map (node without --perf-basic-prof, a JVM without an agent).
UNNAMED_JIT = "[jit code without a perf map]"
UNKNOWN = "[unknown]"
VDSO = "[vdso]"
MAX_VDSO_BYTES = 1 << 20  # a few pages on every kernel seen


# V8 names a function's code by its tier ("JS:~f" interpreted, "JS:^f" baseline,
# "JS:+f" Maglev, "JS:*f" optimised; older: "LazyCompile:*f"): one function, one frame.
_V8_TIER = re.compile(r"^(?:JS|LazyCompile|Function):[~^+*]?")


def jit_name(name: str) -> str:
    return _V8_TIER.sub("", name, count=1) or name


class _Binary(NamedTuple):
    info: ElfInfo
    symbols: Symbols


class _ProcessView(NamedTuple):
    mappings: list[Mapping]
    starts: list[int]
    perf_map: AddressNames | None


def _read_bytes(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


class Symbolizer:
    def __init__(self, proc: str = "/proc", max_binaries: int = 64) -> None:
        self._proc = proc
        self._max_binaries = max_binaries
        self._binaries: OrderedDict[object, _Binary | None] = OrderedDict()
        self._views: dict[int, _ProcessView | None] = {}  # this window's
        self._opened: dict[tuple[int, str], _Binary | None] = {}  # this window's
        self._kernel: AddressNames | None = None
        self._vdso: _Binary | bool | None = None  # False: not readable

    def new_window(self) -> None:
        """Forget what a process's memory looked like: it loads and JITs as it goes."""
        self._views.clear()
        self._opened.clear()

    def frames(self, pid: int, user: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[Frame, ...]:
        """Leaf first: the kernel's frames (a sample in a system call), then the user's."""
        out = [self._kernel_frame(ip) for ip in kernel]
        view = self._view(pid) if user else None
        for depth, ip in enumerate(user):
            # a caller's address is where its call returns to: the call is just before
            out.append(self._user_frame(pid, view, ip if depth == 0 else ip - 1))
        return tuple(out)

    # -- the kernel --------------------------------------------------------------

    def _kernel_frame(self, ip: int) -> Frame:
        if self._kernel is None:
            raw = _read_bytes(f"{self._proc}/kallsyms", 256 << 20) or b""
            self._kernel = parse_kallsyms(raw.decode(errors="replace"))
            if not len(self._kernel):
                log.info("kernel symbols unreadable (kptr_restrict?): kernel frames unnamed")
        name = self._kernel.name(ip)
        return Frame(name or UNKNOWN, KERNEL)

    # -- user space --------------------------------------------------------------

    def _view(self, pid: int) -> _ProcessView | None:
        if pid in self._views:
            return self._views[pid]
        view = None
        raw = _read_bytes(f"{self._proc}/{pid}/maps", 64 << 20)
        if raw is not None:
            mappings = parse_maps(raw.decode(errors="replace"))
            view = _ProcessView(mappings, [m.start for m in mappings], self._perf_map(pid))
        self._views[pid] = view
        return view

    def _perf_map(self, pid: int) -> AddressNames | None:
        ns_pid = pid
        status = _read_bytes(f"{self._proc}/{pid}/status", 1 << 16) or b""
        for line in status.splitlines():
            if line.startswith(b"NSpid:"):
                with contextlib.suppress(ValueError):
                    ns_pid = int(line.split()[-1])
        data = _read_bytes(f"{self._proc}/{pid}/root/tmp/perf-{ns_pid}.map", MAX_PERF_MAP_BYTES)
        return parse_perf_map(data) if data else None

    def _user_frame(self, pid: int, view: _ProcessView | None, ip: int) -> Frame:
        if view is None:
            return Frame(UNKNOWN, UNKNOWN)
        m = find_mapping(view.mappings, view.starts, ip)
        if m is not None and m.path == VDSO:
            return self._vdso_frame(pid, m, ip)
        if m is None or not m.path or m.path.startswith("["):
            name = view.perf_map.name(ip) if view.perf_map is not None else None
            if name:
                return Frame(jit_name(name), JIT)
            if m is not None and not m.path and m.executable:
                return Frame(UNNAMED_JIT, JIT)  # code a runtime wrote and did not name
            return Frame(UNKNOWN, m.path if m is not None and m.path else UNKNOWN)
        binary = self._binary(pid, m)
        offset = ip - m.start + m.offset
        vaddr = file_offset_to_vaddr(binary.info.loads, offset) if binary else None
        if binary is None or vaddr is None:
            return Frame(f"{os.path.basename(m.path)}+0x{offset:x}", m.path)
        name = binary.symbols.name(vaddr)
        return Frame(name or f"{os.path.basename(m.path)}+0x{vaddr:x}", m.path)

    def _vdso_frame(self, pid: int, m: Mapping, ip: int) -> Frame:
        """The kernel's vDSO (clock_gettime and friends): an ELF image in memory
        only, the same in every process, read once from the first one sampled in it."""
        if self._vdso is None:
            image = None
            with (
                contextlib.suppress(OSError, ValueError, OverflowError),
                open(f"{self._proc}/{pid}/mem", "rb") as mem,
            ):
                mem.seek(m.start)
                image = mem.read(min(m.end - m.start, MAX_VDSO_BYTES))
            f = io.BytesIO(image or b"")
            info = read_info(f) if image else None
            self._vdso = _Binary(info, read_symbols(f)) if info else False
        if isinstance(self._vdso, _Binary):
            vaddr = file_offset_to_vaddr(self._vdso.info.loads, ip - m.start)
            name = self._vdso.symbols.name(vaddr) if vaddr is not None else None
            if name:
                return Frame(name, VDSO)
        return Frame(UNKNOWN, VDSO)

    def _binary(self, pid: int, m: Mapping) -> _Binary | None:
        key = (pid, m.path)
        if key in self._opened:
            return self._opened[key]
        found = None
        for path in (
            f"{self._proc}/{pid}/map_files/{m.start:x}-{m.end:x}",
            f"{self._proc}/{pid}/root{m.path}",
        ):
            try:
                with open(path, "rb") as f:
                    found = self._cached(pid, m.path, f)
                break
            except OSError:
                continue
        self._opened[key] = found
        return found

    def _cached(self, pid: int, path: str, f: BinaryIO) -> _Binary | None:
        st = os.fstat(f.fileno())
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity in self._binaries:
            self._binaries.move_to_end(identity)
            return self._binaries[identity]
        info = read_info(f)
        binary = None
        if info is not None:
            cached = self._binaries.get(info.build_id) if info.build_id else None
            if cached is not None:
                binary = cached
            else:
                symbols = read_symbols(f)
                if not info.has_symtab:
                    debug = self._debug_symbols(pid, path, info)
                    if debug is not None:
                        symbols = symbols.merged(debug)
                binary = _Binary(info, symbols)
                if info.build_id:
                    self._remember(info.build_id, binary)
        self._remember(identity, binary)
        return binary

    def _remember(self, key: object, binary: _Binary | None) -> None:
        self._binaries[key] = binary
        while len(self._binaries) > self._max_binaries:
            self._binaries.popitem(last=False)

    def _debug_symbols(self, pid: int, path: str, info: ElfInfo) -> Symbols | None:
        """A separate debug file, by build-id or by debug link (GDB's search order)."""
        root = f"{self._proc}/{pid}/root"
        for candidate in debug_file_candidates(path, info):
            try:
                with open(root + candidate, "rb") as f:
                    symbols = read_symbols(f)
            except OSError:
                continue
            if len(symbols):
                return symbols
        return None
