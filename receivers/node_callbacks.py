"""Which Node.js programs give callback context, and keeping uprobes on their runtime.

Node serves many requests on one thread, in callbacks, so the thread rule gives
it no context under concurrency; the uprobes of `bpf/node.bpf.c` on
`node::InternalMakeCallback` (every call from Node's C++ into JavaScript: a
socket's data, a timer, a promise's job queue ends inside it) delimit callbacks
instead. The function is exported, by the `node` executable or by the
`libnode.so` it links, so its address is in `.dynsym` even when stripped. One
attach per file covers every process running it; each process is registered in
the kernel, which then notes its threads' reads (the cause of the next
callback).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otel_ebpf.processors.profiling.elf import named_symbols
from otel_ebpf.receivers.asyncio_tasks import Uprobe
from otel_ebpf.receivers.file_probes import FileId, FileProbes, held_path
from otel_ebpf.receivers.tls import mapped_paths

log = logging.getLogger(__name__)

# node::InternalMakeCallback(Environment*, Local<Object>, Local<Object>, Local<Function>, ...)
CALLBACK_SYMBOL = "_ZN4node20InternalMakeCallbackEPNS_11Environment"
_CALLBACK_NAME = CALLBACK_SYMBOL.encode()
_LIBNODE = re.compile(r"/libnode\.so(\.\d+)*$")


def callback_address(path: str) -> int | None:
    """Where `node::InternalMakeCallback` is in a file (None: not a Node runtime)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                return None
            for _, _, address in named_symbols(elf, ".dynsym", (_CALLBACK_NAME,), prefix=True):
                return address
            return None
    except (ELFError, OSError, ValueError, KeyError) as exc:
        log.debug("symbols of %s not read: %s", path, exc)
    return None


def probes_at(address: int) -> list[Uprobe]:
    # the return first: a callback whose entry is seen always has its return seen
    return [
        Uprobe(address, "node_callback_return", on_return=True),
        Uprobe(address, "node_callback_enter"),
    ]


class NodeProbes(FileProbes[list[Uprobe]]):
    """Keeps uprobes on every Node runtime file a traced process runs, and
    registers its processes with the kernel."""

    what = "Node runtime"

    def __init__(
        self,
        attach: Callable[[str, list[Uprobe]], list[Uprobe]],  # -> those attached
        detach: Callable[[str, list[Uprobe]], None],
        register: Callable[[int], None],
        selected: Callable[[int], bool] = lambda _pid: True,
    ) -> None:
        super().__init__(attach, detach, selected)
        self._register = register

    def check(self, pid: int) -> None:
        """A process seen for the first time: register it if it runs Node."""
        if pid in self.checked:
            return
        self.checked.add(pid)
        root = f"/proc/{pid}/root"
        candidates = [f"/proc/{pid}/exe"] + [
            root + p.removesuffix(" (deleted)") for p in mapped_paths(pid) if _LIBNODE.search(p)
        ]
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            file = (st.st_dev, st.st_ino)
            if file in self._refused:
                continue
            address = None if file in self._files else callback_address(path)
            if file not in self._files and address is None:
                self._refuse(file)
                continue
            # asked only of a Node process: the answer makes the process known
            if not self._selected(pid):
                return
            if address is not None and not self._probe(pid, path, file, address):
                return
            self._register(pid)
            self._pids[pid] = {file}
            return

    def _probe(self, pid: int, path: str, file: FileId, address: int) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        probes = probes_at(address)
        attached = self._attach(held_path(fd), probes)
        if len(attached) < len(probes):
            self._detach(held_path(fd), attached)
            os.close(fd)
            self._refuse(file)
            log.warning("Node: uprobes on %s (pid %d) not attached: no callback context", path, pid)
            return False
        self._files[file] = (fd, probes)
        log.info("Node: callback context for pid %d (%s)", pid, os.path.realpath(path))
        return True

    def exec(self, pid: int) -> None:
        """The process runs a new program (the kernel forgot its registration)."""
        super().exec(pid)
        self.check(pid)

    def sweep(self) -> None:
        """Forget exited processes; detach from files no process runs any more."""
        self._forget_exited()
        self._let_go_unused()
