"""The event path's modules compiled to C by mypyc, where setup built them.

Every kernel event runs through a few modules of plain, typed Python (HOT_PATH):
interpreted, they cost about 15 µs an event. `scripts/build_native.py` compiles
them with mypyc into `_native/` beside this file, and the import hook below
loads them instead of their sources, but only when they were built from exactly
the sources present (one digest over every module of the package) by this
interpreter: an edited tree runs as Python until setup builds again, never as
stale machine code. `OTEL_EBPF_NATIVE=0` runs Python regardless.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# What every request goes through: the ring buffer's drain and decode, the
# pipeline's dispatch, parsing, tracking, its trace context, delivery, the span,
# its metrics, its merge with SDK spans, and its encoding; every protocol's
# parser (a database's commands come as fast as HTTP requests; DNS and HTTP/2
# because their framers share the compiled base class).
HOT_PATH = (
    "otel_ebpf.aggregation",
    "otel_ebpf.export_room",
    "otel_ebpf.live",
    "otel_ebpf.model",
    "otel_ebpf.otlp_encoding",
    "otel_ebpf.pipeline",
    "otel_ebpf.processors.connections",
    "otel_ebpf.processors.correlate",
    "otel_ebpf.processors.delivery",
    "otel_ebpf.processors.merge",
    "otel_ebpf.processors.metrics_recorder",
    "otel_ebpf.processors.misconfig",
    "otel_ebpf.processors.own_traffic",
    "otel_ebpf.processors.phases",
    "otel_ebpf.processors.protocols.dns",
    "otel_ebpf.processors.protocols.framing",
    "otel_ebpf.processors.protocols.http1",
    "otel_ebpf.processors.protocols.http2",
    "otel_ebpf.processors.protocols.mysql",
    "otel_ebpf.processors.protocols.numbers",
    "otel_ebpf.processors.protocols.postgres",
    "otel_ebpf.processors.protocols.resp",
    "otel_ebpf.processors.redaction",
    "otel_ebpf.processors.reorder",
    "otel_ebpf.processors.spans",
    "otel_ebpf.processors.streams",
    "otel_ebpf.processors.wall_clock",
    "otel_ebpf.receivers.ringbuf",
    "otel_ebpf.receivers.sockets",
    "otel_ebpf.span_batches",
)
# The shared library the compiled modules' stubs import (mypyc's group).
GROUP = "otel_ebpf._native.hot"
NATIVE_DIR = Path(__file__).resolve().parent / "_native"
MANIFEST = "manifest.json"
_PACKAGES = ("otel_ebpf", "otel_ebpf.processors", "otel_ebpf.receivers", "otel_ebpf.bpf")


def package_directories() -> list[Path]:
    """Where the package's modules are (receivers/ and processors/ sit apart from
    otel_ebpf/ in the repository and inside it once installed)."""
    found = []
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found += [Path(p).resolve() for p in spec.submodule_search_locations]
    return found


def source_digest(directories: Sequence[Path] | None = None) -> str:
    """One digest of every module's source: compiled code assumes its neighbours'
    constants and classes, so any change anywhere makes a build stale."""
    digest = hashlib.sha256()
    for directory in directories if directories is not None else package_directories():
        for path in sorted(directory.rglob("*.py")):
            if NATIVE_DIR in path.parents:
                continue
            digest.update(str(path.relative_to(directory)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def interpreter_tag() -> str:
    """What an extension must have been built for."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def read_manifest(directory: Path = NATIVE_DIR) -> dict[str, object] | None:
    """What a build says of itself (None: no build there)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def stale(manifest: dict[str, object], digest: str | None = None) -> str:
    """Why a build cannot stand for the sources present ("" when it can)."""
    if manifest.get("interpreter") != interpreter_tag():
        return f"built for {manifest.get('interpreter')}"
    if manifest.get("digest") != (digest or source_digest()):
        return "built from other sources: run setup again to rebuild"
    return ""


class NativeFinder(importlib.abc.MetaPathFinder):
    """Loads a hot module from its compiled build when that build is fresh."""

    def __init__(self, directory: Path, manifest: dict[str, object]) -> None:
        self._directory = directory
        self._manifest = manifest
        modules = manifest.get("modules")
        self._modules: dict[str, str] = dict(modules) if isinstance(modules, dict) else {}
        self._fresh: bool | None = None  # decided at the first hot import
        self.reason = ""

    def fresh(self) -> bool:
        if self._fresh is None:
            self.reason = stale(self._manifest)
            self._fresh = not self.reason
        return self._fresh

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        filename = self._modules.get(fullname)
        if filename is None or not self.fresh():
            return None
        return importlib.util.spec_from_file_location(fullname, self._directory / filename)

    def loaded(self) -> list[str]:
        """The hot modules imported from their compiled build so far."""
        return [
            name
            for name in self._modules
            if (getattr(sys.modules.get(name), "__file__", None) or "").startswith(
                str(self._directory)
            )
        ]


_finder: NativeFinder | None = None
_why_not = "not installed"


def install(directory: Path = NATIVE_DIR) -> None:
    """Put the hook first on the import path (before any hot module is imported)."""
    global _finder, _why_not
    if os.environ.get("OTEL_EBPF_NATIVE", "1") == "0":
        _why_not = "OTEL_EBPF_NATIVE=0"
        return
    manifest = read_manifest(directory)
    if manifest is None:
        _why_not = f"not built ({directory} holds no build: setup builds it)"
        return
    _finder = NativeFinder(directory, manifest)
    sys.meta_path.insert(0, _finder)


def status() -> str:
    """For the start log and `doctor`: whether the event path runs compiled."""
    if _finder is None:
        return f"Python ({_why_not})"
    if not _finder.fresh():
        return f"Python ({_finder.reason})"
    return f"compiled with mypyc ({len(_finder.loaded())} of its {len(HOT_PATH)} modules in use)"
