"""What the runtime probe keepers (Go, Node, asyncio) share: uprobes kept on files.

One attach per distinct file covers every process that runs or maps it, now
and later. Each probed file is held open, so its probes can be detached by a
path that stays valid whatever its processes do; files found unsuitable are
remembered (a bounded set, read again once cleared); exited processes are
forgotten, and a file no process uses any more is let go.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

FileId = tuple[int, int]  # (st_dev, st_ino)
MAX_REFUSED = 4096  # files known not to be probed
P = TypeVar("P")  # a file's probes, as the attach and detach callables take them


class FileProbes(Generic[P]):
    """The files probed, those refused, and the processes using each."""

    what = "probed file"  # in the log line of a file let go

    def __init__(
        self,
        attach: Callable[[str, P], P],  # -> those attached
        detach: Callable[[str, P], None],
        selected: Callable[[int], bool] = lambda _pid: True,
        proc: str = "/proc",
    ) -> None:
        """`selected`: whether a process is traced at all."""
        self._attach = attach
        self._detach = detach
        self._selected = selected
        self._proc = proc
        self._files: dict[FileId, tuple[int, P]] = {}  # the descriptor that holds each, probes
        self._refused: set[FileId] = set()
        self._pids: dict[int, set[FileId]] = {}  # processes using probed files
        self.checked: set[int] = set()

    @property
    def processes(self) -> int:
        return len(self._pids)

    def _refuse(self, file: FileId) -> None:
        if len(self._refused) >= MAX_REFUSED:
            self._refused.clear()
        self._refused.add(file)

    def exec(self, pid: int) -> None:
        """The process runs a new program: looked at anew."""
        self.checked.discard(pid)
        self._pids.pop(pid, None)

    def _forget_exited(self) -> set[int]:
        """Forget the processes that exited; returns the live ones."""
        live = set(live_pids(self._proc))
        self.checked.intersection_update(live)
        for pid in [p for p in self._pids if p not in live]:
            del self._pids[pid]
        return live

    def _let_go_unused(self) -> None:
        """Detach the probes of every held file no process uses any more."""
        used: set[FileId] = set().union(*self._pids.values())
        for file in [f for f in self._files if f not in used]:
            fd, probes = self._files.pop(file)
            self._detach(held_path(fd), probes)
            os.close(fd)
            log.info("detached from a %s no process uses any more", self.what)


def held_path(fd: int) -> str:
    """A path to the file we hold open as `fd`, whatever happens to its processes."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def live_pids(proc: str = "/proc") -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []
