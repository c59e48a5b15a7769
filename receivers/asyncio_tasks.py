"""Which Python programs give asyncio task context, and keeping uprobes on their `_asyncio`.

An asyncio program serves many requests on one thread, so the thread rule gives
it no context under concurrency; the uprobes of `bpf/asyncio.bpf.c` name the
task each socket call runs in instead. They go on the `_asyncio` extension
module's file (one attach per distinct file covers every process that maps it,
now and later), at the addresses of two static functions, `task_step_impl` and
`TaskObj_dealloc`, read from the file's symbol table, or from its separate
debug file when the file is stripped (Debian's is: its symbols come with the
`python3.11-dbg` package, under `/usr/lib/debug/.build-id`).

Found through `/proc/PID/maps` when a process is first seen on a socket (an
asyncio program imports asyncio before it serves); a Python process seen
without `_asyncio` is looked at again at each sweep, in case it imports it later.
Supported: CPython 3.8 and later (the version is read from the module's file
name: `task_step_impl` takes the module state first from 3.12 on).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import NamedTuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otel_ebpf.processors.profiling.elf import (
    STT_FUNC,
    debug_file_candidates,
    named_symbols,
    read_info,
)
from otel_ebpf.receivers.file_probes import FileId, FileProbes, held_path
from otel_ebpf.receivers.tls import mapped_paths

log = logging.getLogger(__name__)

_ASYNCIO = re.compile(r"/_asyncio\.cpython-3(\d+)[a-z]*-[^/]*\.so$")
_PYTHON = re.compile(r"/(lib)?python3(\.\d+)?[a-z]*(\.so[.\d]*)?$")
MIN_MINOR = 8
STATE_FIRST_MINOR = 12  # task_step_impl(asyncio_state *, TaskObj *, PyObject *)
MAX_WATCHED = 4096  # Python processes without asyncio, looked at again at sweeps


class Uprobe(NamedTuple):
    address: int  # the function's virtual address in its file
    program: str  # in bpf/asyncio.bpf.c
    on_return: bool = False


def asyncio_modules(pid: int) -> list[str]:
    """The `_asyncio` extension files a process maps, opened through its root."""
    return [
        f"/proc/{pid}/root{path}"
        for path in (p.removesuffix(" (deleted)") for p in mapped_paths(pid))
        if _ASYNCIO.search(path)
    ]


def is_python(paths: list[str]) -> bool:
    """A CPython interpreter runs in a process that maps these files."""
    return any(_PYTHON.search(p) for p in paths)


def python_minor(path: str) -> int | None:
    """3.X's X, from the module's file name (`_asyncio.cpython-312-...so`)."""
    m = _ASYNCIO.search(path)
    return int(m.group(1)) if m else None


def probes_of(path: str, root: str = "") -> tuple[list[Uprobe], str]:
    """The uprobes for one `_asyncio` file (seen by its process as `path` under
    `root`), or none and why not."""
    minor = python_minor(path)
    if minor is None or minor < MIN_MINOR:
        return [], "not a CPython 3.8+ _asyncio module"
    wanted = ("task_step_impl", "TaskObj_dealloc")
    found = function_addresses(root + path, wanted)
    if len(found) < len(wanted):
        try:
            with open(root + path, "rb") as f:
                info = read_info(f)
        except OSError:
            info = None
        for candidate in debug_file_candidates(path, info) if info else []:
            found = function_addresses(root + candidate, wanted)
            if len(found) == len(wanted):
                break
    if len(found) < len(wanted):
        return [], (
            "its _asyncio module is stripped of the task functions "
            "(install its debug symbols, e.g. Debian's python3.X-dbg)"
        )
    enter = "py_task_step_state" if minor >= STATE_FIRST_MINOR else "py_task_step"
    step, dealloc = found["task_step_impl"], found["TaskObj_dealloc"]
    # the return first: a step whose entry is seen always has its return seen
    return [
        Uprobe(step, "py_task_step_return", on_return=True),
        Uprobe(step, enter),
        Uprobe(dealloc, "py_task_dealloc"),
    ], ""


def function_addresses(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """Addresses of the named functions in a file's `.symtab` (static functions
    are there only), as far as they are found."""
    wanted = tuple(n.encode() for n in names)
    try:
        with open(path, "rb") as f:
            return {  # the last of a name, as pyelftools' walk kept it
                name.decode(): value
                for name, kind, value in named_symbols(ELFFile(f), ".symtab", wanted)
                if kind == STT_FUNC
            }
    except (ELFError, OSError, ValueError, KeyError) as exc:
        log.debug("symbols of %s not read: %s", path, exc)
    return {}


class AsyncioProbes(FileProbes[list[Uprobe]]):
    """Keeps uprobes on every `_asyncio` file a traced Python process maps."""

    what = "_asyncio module"

    def __init__(
        self,
        attach: Callable[[str, list[Uprobe]], list[Uprobe]],  # -> those attached
        detach: Callable[[str, list[Uprobe]], None],
        selected: Callable[[int], bool] = lambda _pid: True,
    ) -> None:
        """`selected`: whether a process is traced at all."""
        super().__init__(attach, detach, selected)
        self._watched: set[int] = set()  # Python processes with no _asyncio yet

    def check(self, pid: int) -> None:
        """A process seen for the first time: probe the `_asyncio` it maps."""
        if pid in self.checked:
            return
        self.checked.add(pid)
        paths = [p.removesuffix(" (deleted)") for p in mapped_paths(pid)]
        modules = [p for p in paths if _ASYNCIO.search(p)]
        if not modules:
            if is_python(paths) and len(self._watched) < MAX_WATCHED:
                self._watched.add(pid)  # it may import asyncio later
            return
        self._watched.discard(pid)
        # asked last: the answer makes the process known (named, in the telemetry)
        if not self._selected(pid):
            return
        for path in modules:
            file = self._probe(pid, path)
            if file is not None:
                self._pids.setdefault(pid, set()).add(file)

    def _probe(self, pid: int, path: str) -> FileId | None:
        root = f"/proc/{pid}/root"
        try:
            st = os.stat(root + path)
        except OSError:
            return None
        file = (st.st_dev, st.st_ino)
        if file in self._files:
            return file
        if file in self._refused:
            return None
        probes, why = probes_of(path, root)
        fd = -1
        if probes:
            try:
                fd = os.open(root + path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            attached = self._attach(held_path(fd), probes)
            if len(attached) < len(probes):
                self._detach(held_path(fd), attached)
                why = "its uprobes could not be attached"
        if fd < 0 or why:
            if fd >= 0:
                os.close(fd)
            self._refuse(file)
            log.info("asyncio: pid %d (%s) gets no task context: %s", pid, path, why)
            return None
        self._files[file] = (fd, probes)
        log.info("asyncio: task context for pid %d (%s)", pid, path)
        return file

    def exec(self, pid: int) -> None:
        """The process runs a new program: looked at anew when next seen."""
        super().exec(pid)
        self._watched.discard(pid)

    def sweep(self) -> None:
        """Python processes that may have imported asyncio since are looked at
        again; exited ones forgotten; files no process maps any more detached."""
        live = self._forget_exited()
        for pid in list(self._watched):
            self._watched.discard(pid)
            self.checked.discard(pid)
            if pid in live:
                self.check(pid)
        self._let_go_unused()
