"""Which processes' TLS the collector can read, and keeping uprobes on their libssl.

Uprobes live on a file, so one attach per distinct libssl file (device, inode)
covers every process that maps it, including those started later. Files are
found in `/proc/PID/maps` and opened through `/proc/PID/root`, so a container's
own libssl (another mount namespace) is probed like the host's. Files seen
only through processes that have all exited are detached at the next sweep.

A process whose TLS handshake reaches the socket probes as ciphertext uses
something else (Go crypto/tls, rustls, GnuTLS, NSS, Java, OpenSSL linked
statically): `explain()` says which, for a log line naming the process.
"""

from __future__ import annotations

import glob
import logging
import mmap
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")
# libssl.so.3, and the renamed copies Python wheels bundle (libssl-1a2b3c4d.so.3)
_LIBSSL = re.compile(r"/libssl(-[0-9a-f]+)?\.so(\.[0-9.]+)?$")
FileId = tuple[int, int]  # (st_dev, st_ino)
ATTACH_GRACE_S = 5.0  # a handshake this soon after its library was probed raced the attach

# Mapped libraries that mean a TLS stack the OpenSSL probes do not see.
_OTHER_LIBRARIES = (
    ("libgnutls", "GnuTLS"),
    ("libnss3", "NSS"),
    ("libssl3.so", "NSS"),
    ("libjvm", "Java (JSSE)"),
    ("libwolfssl", "wolfSSL"),
    ("libmbedtls", "Mbed TLS"),
)
# Markers in an executable that name its TLS stack when nothing is mapped.
_EXECUTABLE_MARKERS = (
    (b"\xff Go buildinf:", "Go crypto/tls"),
    (b"rustls", "rustls"),
    (b"SSL_write", "OpenSSL/BoringSSL linked statically"),
)


def mapped_paths(pid: int) -> Iterator[str]:
    """File paths in a process's memory map (as the process sees them)."""
    try:
        text = (PROC / str(pid) / "maps").read_text()
    except OSError:  # gone, or a kernel thread
        return
    seen = set()
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[5] not in seen:
            seen.add(parts[5])
            yield parts[5]


def libssls_of(pid: int) -> list[str]:
    """The libssl files a process maps, opened through its root. Often more than
    one: Python's ssl module maps the system's, a database driver's wheel its own."""
    return [
        f"/proc/{pid}/root{path}"
        for path in (p.removesuffix(" (deleted)") for p in mapped_paths(pid))
        if _LIBSSL.search(path)
    ]


def host_libraries() -> list[str]:
    """libssl files in the host's library directories: probed at start, so a
    process started later is traced from its first byte."""
    found: dict[FileId, str] = {}
    for pattern in (
        "/usr/lib*/libssl.so.*",
        "/usr/lib*/*/libssl.so.*",
        "/usr/local/lib*/libssl.so.*",
    ):
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            file = _file_id(real)
            if file is not None and _LIBSSL.search(real):
                found.setdefault(file, real)
    return list(found.values())


def _file_id(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def explain(pid: int) -> str:
    """Why a process's TLS is not visible, as far as its maps and binary tell."""
    if not os.path.exists(f"/proc/{pid}/exe"):
        return "it exited before its TLS library could be told"
    return other_tls_stack(pid) or "a TLS library linked into the executable"


def other_tls_stack(pid: int) -> str | None:
    """A TLS stack other than a shared libssl that the process maps or carries."""
    for path in mapped_paths(pid):
        for marker, name in _OTHER_LIBRARIES:
            if marker in path:
                return f"{name} ({path})"
    if libssls_of(pid):
        return None
    try:
        with (
            open(PROC / str(pid) / "exe", "rb") as f,
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            for needle, stack in _EXECUTABLE_MARKERS:
                if data.find(needle) >= 0:
                    return stack
    except (OSError, ValueError):
        pass
    return None


class OpenSslProbes:
    """Keeps uprobes on every libssl file some process maps."""

    def __init__(self, attach: Callable[[str], int], detach: Callable[[str], None]) -> None:
        self._attach = attach
        self._detach = detach
        self._attached: dict[FileId, str] = {}  # file -> the path it was attached by
        self._held: dict[FileId, int] = {}  # descriptors that keep other namespaces' files
        self._failed: set[FileId] = set()
        self._attached_at: dict[FileId, float] = {}
        self._pinned: set[FileId] = set()  # the host's own: kept for processes to come
        self.checked: set[int] = set()  # pids whose maps were read
        self._explained: set[str] = set()  # executables already reported

    @property
    def libraries(self) -> list[str]:
        return sorted(self._attached.values())

    def start(self) -> None:
        """The host's libssl files, then every process running now."""
        for path in host_libraries():
            file = _file_id(path)
            if file is not None and file not in self._attached:
                self._attach_file(path, path, file)
                self._pinned.add(file)
        self.scan_all()

    def scan_all(self) -> None:
        """Every process now (start-up and sweeps); detach files nobody maps any more."""
        live: set[FileId] = set()
        pids = [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]
        self.checked.intersection_update(pids)  # the same set: callers hold it
        for pid in pids:
            live.update(self.check(pid, force=True))
        for file in [f for f in self._attached if f not in live and f not in self._pinned]:
            path = self._attached.pop(file)
            del self._attached_at[file]
            self._detach(path)
            held = self._held.pop(file, None)
            if held is not None:
                os.close(held)
            log.info("TLS: detached from %s (no process maps it any more)", path)

    def check(self, pid: int, force: bool = False) -> list[FileId]:
        """A process seen for the first time: probe the libssl files it maps that
        are new to us. Returns the probed files it maps."""
        if pid in self.checked and not force:
            return []
        self.checked.add(pid)
        probed = []
        for path in libssls_of(pid):
            file = _file_id(path)
            if file is None or file in self._failed:
                continue
            if file in self._attached or self._attach_file(
                probe := self._stable_path(path, file), probe, file
            ):
                probed.append(file)
        return probed

    def _attach_file(self, probe_path: str, shown: str, file: FileId) -> bool:
        if self._attach(probe_path) == 0:
            self._failed.add(file)
            log.warning("TLS: no OpenSSL functions could be probed in %s", shown)
            return False
        self._attached[file] = probe_path
        self._attached_at[file] = time.monotonic()
        log.info("TLS: reading plaintext through OpenSSL in %s", shown)
        return True

    def _stable_path(self, path: str, file: FileId) -> str:
        """A path to the file that outlives the process it was found through: the
        same path in our own root if it is the same file, else a descriptor we hold
        (a container's library; detaching later must resolve the path again)."""
        own = path.split("/root", 1)[1]
        if _file_id(own) == file:
            return own
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._held[file] = fd
        return f"/proc/{os.getpid()}/fd/{fd}"

    def not_visible(self, pid: int, executable: str, sent: bool = True) -> bool:
        """A TLS handshake reached the socket probes as ciphertext, `sent` by the
        process or received: log it once per executable, unless its libssl was
        probed only just now (the handshake came first; its next calls are read).
        Returns whether this was news of TLS that cannot be read."""
        files = self.check(pid, force=True)
        if files and not sent:
            # Its OpenSSL is read, and this handshake never went through it: a TLS
            # client at a plain-text port (a server answers it 400), or a second TLS
            # stack (grpcio's BoringSSL). Said apart, not counted as unreadable TLS,
            # and hiding no later word of the process's own TLS.
            if f"{executable} received" not in self._explained:
                self._explained.add(f"{executable} received")
                log.warning(
                    "pid %d (%s) received a TLS handshake outside the OpenSSL calls read: "
                    "a TLS client at a plain-text port, or a second TLS library",
                    pid,
                    executable,
                )
            return False
        now = time.monotonic()
        if any(now - self._attached_at[file] < ATTACH_GRACE_S for file in files):
            return False
        if executable in self._explained:
            return False
        self._explained.add(executable)
        reason = "OpenSSL calls the uprobes do not cover" if files else explain(pid)
        log.warning(
            "TLS not visible for pid %d (%s): %s; its connections are traced without "
            "method, path, status or trace context",
            pid,
            executable,
            reason,
        )
        return True
