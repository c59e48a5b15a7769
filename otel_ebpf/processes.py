"""What the collector knows of a traced process, read once from /proc and cached."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import NamedTuple, Protocol

from opentelemetry.sdk.resources import Resource

from otel_ebpf import __version__
from otel_ebpf.processors.redaction import scrub_argv
from otel_ebpf.runtimes import Runtimes


class ProcessInfo(NamedTuple):
    pid: int
    executable_name: str
    service_name: str
    resource: Resource
    runtime: str = ""  # "go", or "" (see otel_ebpf.runtimes)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _service_name_from_environ(environ: bytes) -> str | None:
    """OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES (SDK precedence)."""
    from_attributes = None
    for entry in environ.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if not sep:
            continue
        if key == b"OTEL_SERVICE_NAME" and value.strip():
            return value.decode(errors="replace").strip()
        if key == b"OTEL_RESOURCE_ATTRIBUTES":
            for pair in value.decode(errors="replace").split(","):
                k, _, v = pair.partition("=")
                if k.strip() == "service.name" and v.strip():
                    from_attributes = v.strip()
    return from_attributes


class Identity(Protocol):
    """What a workload identity source (containers, Kubernetes) says of a process."""

    @property
    def attributes(self) -> dict[str, str]: ...
    @property
    def service_name(self) -> str | None: ...
    @property
    def pending(self) -> bool: ...


class ProcessRegistry:
    """pid -> ProcessInfo (with its OTel Resource), built from /proc on first sight."""

    def __init__(
        self,
        proc: str = "/proc",
        extra_attributes: dict[str, str] | None = None,
        identity: Callable[[int], Identity] | None = None,
        command_line: bool = False,
        command_args: bool = False,
        exec_service_name: Callable[[int], str | None] | None = None,
    ) -> None:
        # argv often carries credentials: opt-in, as the conventions have it, and
        # scrubbed even then.
        self._command_line = command_line
        self._command_args = command_args
        self._proc = proc
        # The kernel's record of OTEL_SERVICE_NAME at exec: for a process gone from /proc.
        self._exec_service_name = exec_service_name or (lambda _pid: None)
        self._cache: dict[int, ProcessInfo] = {}
        self._host = socket.gethostname()
        self._extra = dict(extra_attributes or {})
        self._identity = identity
        self._pending: set[int] = set()  # in a pod whose metadata has not arrived yet
        self._runtimes = Runtimes()

    def get(self, pid: int, comm: bytes = b"") -> ProcessInfo:
        """`comm` (the kernel's task name) names a process that exited before we looked,
        also one first looked up without it (an event that carries no name)."""
        info = self._cache.get(pid)
        if info is None or (not info.executable_name and comm[:1] not in (b"", b"\0")):
            info = self._cache[pid] = self._load(
                pid, comm.split(b"\0", 1)[0].decode(errors="replace")
            )
        return info

    def known(self) -> list[ProcessInfo]:
        """The processes seen so far (and not yet found gone)."""
        return list(self._cache.values())

    def prefetch(self, pid: int) -> None:
        """Read a process while it runs (a short-lived client may exit before its
        first data event is handled); nothing is cached if it has already gone."""
        if pid not in self._cache and os.path.exists(f"{self._proc}/{pid}/exe"):
            info = self._load(pid, "")
            if info.executable_name:
                self._cache[pid] = info

    def refresh_pending(self) -> None:
        """Processes seen before their pod's metadata arrived: read them again."""
        for pid in list(self._pending):
            self._pending.discard(pid)
            if pid in self._cache and os.path.exists(f"{self._proc}/{pid}"):
                old = self._cache[pid]
                self._cache[pid] = self._load(pid, old.executable_name)

    def forget(self, pid: int) -> None:
        """The process runs a new program: read it again when next asked."""
        self._cache.pop(pid, None)

    def forget_exited(self) -> list[int]:
        """Drop processes that are gone (called periodically; pids get reused)."""
        gone = [pid for pid in self._cache if not os.path.exists(f"{self._proc}/{pid}")]
        for pid in gone:
            del self._cache[pid]
        return gone

    def _load(self, pid: int, comm: str) -> ProcessInfo:
        base = f"{self._proc}/{pid}"
        try:
            exe = os.path.basename(os.readlink(f"{base}/exe"))
        except OSError:
            exe = _read(f"{base}/comm").decode(errors="replace").strip() or comm
        exe = exe.removesuffix(" (deleted)")
        service = _service_name_from_environ(_read(f"{base}/environ"))
        service = service or self._exec_service_name(pid)
        workload: dict[str, str] = {}
        if self._identity is not None:
            found = self._identity(pid)
            workload = found.attributes
            service = service or found.service_name
            if found.pending:
                self._pending.add(pid)
        if not service:
            service = exe or f"unknown_service:{pid}"
        attributes: dict[str, str | int | list[str]] = {
            **self._extra,
            **workload,
            "service.name": service,
            "process.pid": pid,
            "process.executable.name": exe,
            "host.name": self._host,
            "telemetry.distro.name": "otel-ebpf",
            "telemetry.distro.version": __version__,
        }
        if self._command_line or self._command_args:
            raw = _read(f"{base}/cmdline").rstrip(b"\0")
            argv = scrub_argv(raw.decode(errors="replace").split("\0") if raw else [])
            if self._command_line:
                attributes["process.command_line"] = " ".join(argv)
            if self._command_args:
                attributes["process.command_args"] = argv
        runtime = self._runtimes.of_process(pid, self._proc)
        return ProcessInfo(pid, exe, service, Resource(attributes), runtime)
