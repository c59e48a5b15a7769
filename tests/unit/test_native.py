"""The event path's compiled modules: used where built, never when stale."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from otel_ebpf import native


def test_the_event_path_runs_as_setup_left_it() -> None:
    """`make test` runs the unit tests as Python (OTEL_EBPF_NATIVE=0), then
    everything on the build setup made: each run must be what it says."""
    modules = [importlib.import_module(name) for name in native.HOT_PATH]
    files = [str(module.__file__) for module in modules]
    if os.environ.get("OTEL_EBPF_NATIVE") == "0":
        assert all(f.endswith(".py") for f in files), files
        assert native.status() == "Python (OTEL_EBPF_NATIVE=0)"
    else:
        assert all(f.startswith(str(native.NATIVE_DIR)) for f in files), native.status()
        assert (
            native.status()
            == f"compiled with mypyc ({len(files)} of its {len(files)} modules in use)"
        )


def _finder(tmp_path: Path, **manifest: object) -> native.NativeFinder:
    built = tmp_path / "otel_ebpf.processors.reorder.so"
    built.write_bytes(b"")
    fields = {
        "digest": native.source_digest(),
        "interpreter": native.interpreter_tag(),
        "modules": {"otel_ebpf.processors.reorder": built.name},
        **manifest,
    }
    return native.NativeFinder(tmp_path, fields)


def test_a_build_from_these_sources_is_found(tmp_path: Path) -> None:
    spec = _finder(tmp_path).find_spec("otel_ebpf.processors.reorder", None)
    assert spec is not None and spec.origin == str(tmp_path / "otel_ebpf.processors.reorder.so")
    assert _finder(tmp_path).find_spec("otel_ebpf.processors.correlate", None) is None


def test_a_build_from_other_sources_is_not_loaded(tmp_path: Path) -> None:
    finder = _finder(tmp_path, digest="0" * 64)
    assert finder.find_spec("otel_ebpf.processors.reorder", None) is None
    assert "other sources" in finder.reason


def test_a_build_for_another_interpreter_is_not_loaded(tmp_path: Path) -> None:
    finder = _finder(tmp_path, interpreter=".cpython-399-x86_64-linux-gnu.so")
    assert finder.find_spec("otel_ebpf.processors.reorder", None) is None
    assert "cpython-399" in finder.reason


def test_any_edit_to_any_module_changes_the_digest(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("X = 1\n")
    (package / "sub" / "b.py").write_text("Y = 2\n")
    before = native.source_digest([package])
    (package / "sub" / "b.py").write_text("Y = 3\n")
    assert native.source_digest([package]) != before
    (package / "sub" / "b.py").write_text("Y = 2\n")
    assert native.source_digest([package]) == before
    (package / "sub" / "b.py").rename(package / "sub" / "c.py")
    assert native.source_digest([package]) != before


def test_the_hook_sits_before_the_path_finders() -> None:
    if os.environ.get("OTEL_EBPF_NATIVE") == "0":
        assert native._finder is None
        return
    assert native._finder is not None
    assert sys.meta_path.index(native._finder) < sys.meta_path.index(importlib.machinery.PathFinder)
