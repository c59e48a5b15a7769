"""Which Go programs give goroutine context, and keeping uprobes on their runtime.

A Go request moves between threads, so the thread rule gives Go no context; the
uprobes of `bpf/go.bpf.c` follow it through goroutines instead. They go on the
executable file (one attach per distinct file covers every process running it),
at addresses read from the binary's own `.gopclntab` (kept by `strip`). A
process is then registered in the kernel with a cookie of its own, and only
registered processes' calls name a goroutine: anything not probed keeps the
sound default (no in-process context), never a guess.

Supported: amd64 binaries of Go 1.18 and later (the register ABI; the version is
read from `.go.buildinfo`). The runtime's probe is required (without goroutine
exits a link could outlive its goroutine); net/http's two are used where the
program has them (without a net/http client, a goroutine's own writes are still
its own).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Callable
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otel_ebpf.processors.profiling.elf import code_at, load_segments
from otel_ebpf.processors.profiling.gopclntab import go_functions
from otel_ebpf.receivers.file_probes import FileId, FileProbes, held_path, live_pids

log = logging.getLogger(__name__)

# symbol, program (bpf/go.bpf.c), required
GO_PROBES = (
    ("runtime.goexit1", "go_goexit1", True),
    ("net/http.(*Transport).roundTrip", "go_round_trip", False),
    ("net/http.(*Request).write", "go_request_write", False),
)
REQUIRED = {program for _, program, required in GO_PROBES if required}
Probe = tuple[int, str]  # (address, program)
_BUILDINFO = b"\xff Go buildinf:"
_VERSION = re.compile(rb"go1\.(\d+)")
MIN_MINOR = 18  # Go 1.18: register ABI (1.17) and the .gopclntab layout read here
MAX_TABLE_BYTES = 256 << 20


def go_version(buildinfo: bytes) -> str | None:
    """The Go version a `.go.buildinfo` section names ("go1.26.8"), or None for the
    pre-1.18 layout (version behind a pointer) and anything malformed."""
    if not buildinfo.startswith(_BUILDINFO) or len(buildinfo) < 33:
        return None
    flags = buildinfo[15]
    if not flags & 2:  # versions before 1.18 point at their strings instead
        return None
    length, at = 0, 32
    for shift in range(0, 35, 7):  # a uvarint
        if at >= len(buildinfo):
            return None
        byte = buildinfo[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        return None
    raw = buildinfo[at : at + length]
    if len(raw) != length or not 0 < length <= 64:
        return None
    return raw.decode(errors="replace")


def supported(version: str | None) -> bool:
    found = _VERSION.match(version.encode()) if version else None
    return found is not None and int(found.group(1)) >= MIN_MINOR


# The stack check that opens a Go function (amd64): compare SP (or SP less the
# frame, in R12) with g.stackguard0, then JBE to morestack.
_CMP_SP = b"\x49\x3b\x66\x10"  # CMPQ SP, 0x10(R14)
_CMP_R12 = b"\x4d\x3b\x66\x10"  # CMPQ R12, 0x10(R14)
_LEA_R12 = (b"\x4c\x8d\x64\x24", b"\x4c\x8d\xa4\x24")  # LEAQ disp8/disp32(SP), R12
PROLOGUE_BYTES = 24


def stack_check_branch(code: bytes) -> int | None:
    """Where the JBE of a Go function's stack check is, from the function's first
    bytes (None: another prologue). A uprobe there sees the arguments, SP and R14
    as at the entry, and the kernel emulates a branch: a probe on the entry's
    CMPQ or LEAQ is stepped out of line instead, a debug trap that cost 24-28 us a
    hit on this project's machines against 0.6-0.7 us on the branch
    (bench/uprobe_cost.py)."""
    at = 0
    for lea, size in zip(_LEA_R12, (5, 8), strict=True):
        if code.startswith(lea):
            if not code.startswith(_CMP_R12, size):
                return None
            at = size + len(_CMP_R12)
            break
    else:
        if not code.startswith(_CMP_SP):
            return None
        at = len(_CMP_SP)
    if code[at : at + 1] == b"\x76" or code[at : at + 2] == b"\x0f\x86":  # JBE rel8 / rel32
        return at
    return None


def probes_of(f: BinaryIO, at_branch: bool = True) -> tuple[str | None, list[Probe], str]:
    """(Go version, probes to attach, why not) for an executable file: no probes
    and a reason when it is not a Go program the probes support. `at_branch`:
    on the stack check's branch (False: at the entries, for bench/go_overhead.py)."""
    try:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_X86_64":
            return None, [], f"a {elf['e_machine']} binary (amd64 only)"
        info = elf.get_section_by_name(".go.buildinfo")
        if info is None:
            return None, [], ""  # not Go (or a Go too old to name itself: before 1.13)
        version = go_version(info.data()[:128])
        if not supported(version):
            return version, [], f"Go {version or 'before 1.18'} (1.18 or later only)"
        table, text = elf.get_section_by_name(".gopclntab"), elf.get_section_by_name(".text")
        if table is None or text is None or table["sh_size"] > MAX_TABLE_BYTES:
            return version, [], "no readable .gopclntab"
        wanted = {symbol: program for symbol, program, _ in GO_PROBES}
        loads = load_segments(elf)
        found: dict[str, int] = {}
        for start, _, name in go_functions(table.data(), text["sh_addr"]):
            if name not in wanted:
                continue
            # the function itself, not its ABI0 wrapper (same name in .gopclntab,
            # no stack check: it sets R14 and jumps to the function)
            branch = stack_check_branch(code_at(f, loads, start, PROLOGUE_BYTES))
            if branch is not None:
                found[name] = start + branch if at_branch else start
            else:
                found.setdefault(name, start)
    except (ELFError, OSError, ValueError, KeyError, IndexError) as exc:
        return None, [], f"not readable ({exc})"
    missing = [symbol for symbol, _, required in GO_PROBES if required and symbol not in found]
    if missing:
        return version, [], f"{', '.join(missing)} not found"
    return version, [(found[s], p) for s, p, _ in GO_PROBES if s in found], ""


class GoProbes(FileProbes[list[Probe]]):
    """Keeps uprobes on every supported Go executable a traced process runs, and
    registers its processes with the kernel."""

    what = "Go executable"

    def __init__(
        self,
        attach: Callable[[str, list[Probe]], list[Probe]],  # -> those attached
        detach: Callable[[str, list[Probe]], None],
        register: Callable[[int, int], None],
        selected: Callable[[int], bool] = lambda _pid: True,
        proc: str = "/proc",
    ) -> None:
        """`selected`: whether a process is traced at all."""
        super().__init__(attach, detach, selected, proc)
        self._register = register
        self._cookies = itertools.count(1)

    def start(self) -> None:
        """Every process running now."""
        for pid in live_pids(self._proc):
            self.check(pid)

    def check(self, pid: int) -> None:
        """A process seen for the first time: register it if it runs a Go program
        the probes support (probing its file the first time; refused are those
        not Go, unsupported, or whose attach failed)."""
        if pid in self.checked:
            return
        self.checked.add(pid)
        exe = f"{self._proc}/{pid}/exe"
        try:
            st = os.stat(exe)
        except OSError:
            return  # gone
        file = (st.st_dev, st.st_ino)
        if file in self._refused:
            return
        # an excluded process is not probed: the probes cost its goroutines something
        if not self._selected(pid):
            return
        if file not in self._files and not self._probe(pid, exe, file):
            self._refuse(file)
            return
        self._register(pid, next(self._cookies))
        self._pids[pid] = {file}

    def exec(self, pid: int) -> None:
        """The process runs a new program (the kernel forgot its registration)."""
        super().exec(pid)
        self.check(pid)

    def _probe(self, pid: int, exe: str, file: FileId) -> bool:
        try:
            fd = os.open(exe, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        with open(os.dup(fd), "rb") as f:
            version, probes, why = probes_of(f)
        if not probes:
            os.close(fd)
            if why:
                log.info("Go: pid %d gets no goroutine context: %s", pid, why)
            return False
        attached = self._attach(held_path(fd), probes)
        if not {program for _, program in attached} >= REQUIRED:
            self._detach(held_path(fd), probes)
            os.close(fd)
            log.warning("Go: uprobes on %s (pid %d) not attached: no goroutine context", exe, pid)
            return False
        self._files[file] = (fd, probes)
        log.info(
            "Go: goroutine context for pid %d (%s): %d functions probed",
            pid,
            version,
            len(attached),
        )
        return True

    def sweep(self) -> None:
        """Forget exited processes; detach from files no process runs any more."""
        self._forget_exited()
        self._let_go_unused()
