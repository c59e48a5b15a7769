"""Which language runtime a process runs, read from its executable once per file.

The collector's in-process context rules (a call belongs to the request its
thread serves) hold only where a request stays on one thread. Go schedules
goroutines over OS threads, so a thread's calls can belong to any request; its
binaries are known by their sections (`.go.buildinfo`, kept by `strip`).
"""

from __future__ import annotations

import logging
import os

from elftools.elf.elffile import ELFFile

log = logging.getLogger(__name__)

GO = "go"
_GO_SECTIONS = (".go.buildinfo", ".gopclntab", ".note.go.buildid")
_MAX_CACHED = 4096


class Runtimes:
    """Executable file -> runtime ("go", or "" for anything else), cached by inode."""

    def __init__(self) -> None:
        self._by_file: dict[tuple[int, int], str] = {}

    def of_process(self, pid: int, proc: str = "/proc") -> str:
        path = f"{proc}/{pid}/exe"  # the process's own file, in any mount namespace
        try:
            st = os.stat(path)
        except OSError:
            return ""
        key = (st.st_dev, st.st_ino)
        runtime = self._by_file.get(key)
        if runtime is None:
            runtime = _read_runtime(path)
            if len(self._by_file) >= _MAX_CACHED:
                self._by_file.clear()
            self._by_file[key] = runtime
        return runtime


def _read_runtime(path: str) -> str:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if any(elf.get_section_by_name(name) is not None for name in _GO_SECTIONS):
                return GO
    except Exception as exc:  # gone, not ELF, or malformed: never stops the event path
        log.debug("runtime of %s not read: %s", path, exc)
    return ""
