"""Keeping uprobes on libssl files: one attach per file, detach when unmapped
(pure logic: the attach/detach calls are recorded, /proc is this process's)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from otel_ebpf.receivers import tls
from otel_ebpf.receivers.tls import OpenSslProbes, libssl_of

assert ssl.OPENSSL_VERSION  # this process maps the system libssl from here on


def probes() -> tuple[OpenSslProbes, list[str], list[str]]:
    attached: list[str] = []
    detached: list[str] = []

    def attach(path: str) -> int:
        attached.append(path)
        return 5

    return OpenSslProbes(attach, detached.append), attached, detached


def test_a_process_mapping_libssl_gets_its_file_probed_once() -> None:
    p, attached, _ = probes()
    mine = libssl_of(os.getpid())
    assert mine is not None and mine.startswith(f"/proc/{os.getpid()}/root/")
    p.check(os.getpid())
    p.check(os.getpid(), force=True)
    assert len(attached) == 1
    assert Path(attached[0]).samefile(mine)
    assert not attached[0].startswith("/proc/")  # our own root: the plain path outlives the pid


def test_files_nobody_maps_any_more_are_detached_but_the_hosts_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p, attached, detached = probes()
    p.check(os.getpid())
    monkeypatch.setattr(tls, "libssl_of", lambda pid: None)  # every process has exited
    p.scan_all()
    assert detached == attached and p.libraries == []

    p, attached, detached = probes()
    monkeypatch.setattr(tls, "libssl_of", lambda pid: None)
    p.start()  # the host's own libssl: pinned for processes to come
    p.scan_all()
    assert attached and not detached


def test_a_file_without_openssl_functions_is_not_retried() -> None:
    calls: list[str] = []

    def attach(path: str) -> int:
        calls.append(path)
        return 0

    p = OpenSslProbes(attach, lambda path: None)
    p.check(os.getpid())
    p.check(os.getpid(), force=True)
    assert len(calls) == 1 and p.libraries == []
