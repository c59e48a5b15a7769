"""Which kind of loop the programs are compiled with, from the running kernel's
release (tests/kernel/test_kernel_loops.py loads both kinds on a real one)."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

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
    ("release", "btf", "has"),
    [
        ("6.18.44-fc-v1272", True, True),
        ("5.11.0", True, True),
        ("5.10.209", True, False),
        ("6.1.0", False, False),
    ],
)
def test_task_storage_from_linux_5_11_with_btf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, release: str, btf: bool, has: bool
) -> None:
    vmlinux = tmp_path / "vmlinux"
    if btf:
        vmlinux.touch()
    monkeypatch.setattr(platform, "release", lambda: release)
    assert kernel_has_task_storage(vmlinux) is has
