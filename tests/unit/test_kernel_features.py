"""Which kind of loop and of thread state the programs are compiled with, from
the running kernel's release and helpers (tests/kernel/test_kernel_loops.py
loads every kind on a real one)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from otel_ebpf.receivers import program_cache, sockets
from otel_ebpf.receivers.sockets import kernel_has_may_goto, kernel_has_task_storage


@pytest.mark.parametrize(
    ("release", "has"),
    [
        ("6.18.44-fc-v1272", True),
        ("6.9.0-rc1", True),
        ("7.0.0", True),
        ("6.8.12-generic", False),
        ("5.15.0-91-generic", False),
        ("4.19", False),
        ("unknown", False),
    ],
)
def test_may_goto_from_linux_6_9(monkeypatch: pytest.MonkeyPatch, release: str, has: bool) -> None:
    monkeypatch.setattr(platform, "release", lambda: release)
    assert kernel_has_may_goto() is has


def test_no_may_goto_where_its_bytes_would_be_laid_out_wrong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(platform, "release", lambda: "6.18.0")
    monkeypatch.setattr(sys, "byteorder", "big")
    assert kernel_has_may_goto() is False


@pytest.mark.parametrize(
    ("btf", "allowed", "has"),
    [
        (True, {156, 158}, True),
        (True, {158}, False),  # task storage, not yet to tracepoints
        (True, {156}, False),
        (False, {156, 158}, False),
    ],
)
def test_task_storage_where_btf_and_tracepoints_have_its_helpers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, btf: bool, allowed: set[int], has: bool
) -> None:
    """Tracepoint programs (5) must call task_storage_get (156) and
    get_current_task_btf (158)."""
    vmlinux = tmp_path / "vmlinux"
    if btf:
        vmlinux.touch()
    monkeypatch.setattr(sockets, "kernel_has_helper", lambda t, h: t == 5 and h in allowed)
    assert kernel_has_task_storage(vmlinux) is has


class _Libbpf:
    """libbpf's helper probe answering from a table: 1 yes, 0 no."""

    def __init__(self, answers: dict[int, int], default: int) -> None:
        self.answers, self.default = answers, default

    def libbpf_probe_bpf_helper(self, prog_type: int, helper: int, opts: object) -> int:
        return self.answers.get(helper, self.default)


@pytest.mark.parametrize(
    ("answers", "default", "has"),
    [
        ({156: 1}, 0, True),
        ({156: 0}, 0, False),
        ({}, 1, False),  # yes to everything, a helper no kernel has among them: not let load
        ({156: -1}, 0, False),  # an error
    ],
)
def test_a_helper_counts_only_where_the_probe_tells_yes_from_no(
    monkeypatch: pytest.MonkeyPatch, answers: dict[int, int], default: int, has: bool
) -> None:
    monkeypatch.setattr(program_cache, "_libbpf", lambda: _Libbpf(answers, default))
    assert program_cache.kernel_has_helper(5, 156) is has


def test_no_helper_without_libbpf(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise OSError("libbpf.so.1: cannot open shared object file")

    monkeypatch.setattr(program_cache, "_libbpf", missing)
    assert program_cache.kernel_has_helper(5, 156) is False
