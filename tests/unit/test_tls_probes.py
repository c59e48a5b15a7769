"""Keeping uprobes on libssl files: one attach per file, detach when unmapped
(pure logic: the attach/detach calls are recorded, /proc is this process's)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from otel_ebpf.receivers import tls
from otel_ebpf.receivers.tls import OpenSslProbes, libssls_of

assert ssl.OPENSSL_VERSION  # this process maps the system libssl from here on


def probes() -> tuple[OpenSslProbes, list[str], list[str]]:
    attached: list[str] = []
    detached: list[str] = []

    def attach(path: str) -> int:
        attached.append(path)
        return 5

    return OpenSslProbes(attach, detached.append), attached, detached


def my_libssl_files() -> set[tuple[int, int]]:
    """Distinct libssl files this process maps (a kernel test run here may have
    imported a database driver that brings its own)."""
    return {(st.st_dev, st.st_ino) for st in map(os.stat, libssls_of(os.getpid()))}


def test_a_process_mapping_libssl_gets_each_file_probed_once() -> None:
    p, attached, _ = probes()
    mine = libssls_of(os.getpid())  # the system's, and any a wheel imported here brought
    assert mine and all(m.startswith(f"/proc/{os.getpid()}/root/") for m in mine)
    p.check(os.getpid())
    p.check(os.getpid(), force=True)
    assert len(attached) == len(my_libssl_files())
    assert all(any(Path(a).samefile(m) for a in attached) for m in mine)
    assert not any(a.startswith("/proc/") for a in attached)  # our own root outlives the pid


def test_every_libssl_a_process_maps_is_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    p, attached, _ = probes()
    system = libssls_of(os.getpid())[0]
    bundled = Path(__file__)  # any other file stands in for a wheel's own copy
    here = f"/proc/{os.getpid()}/root{bundled}"
    monkeypatch.setattr(tls, "libssls_of", lambda pid: [system, here])
    assert len(p.check(os.getpid())) == 2
    assert [Path(a).resolve() for a in attached] == [Path(system).resolve(), bundled]


def test_files_nobody_maps_any_more_are_detached_but_the_hosts_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p, attached, detached = probes()
    p.check(os.getpid())
    monkeypatch.setattr(tls, "libssls_of", lambda pid: [])  # every process has exited
    p.scan_all()
    assert detached == attached and p.libraries == []

    p, attached, detached = probes()
    monkeypatch.setattr(tls, "libssls_of", lambda pid: [])
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
    assert len(calls) == len(my_libssl_files()) and p.libraries == []


def test_a_handshake_received_outside_a_read_openssl_is_said_apart(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """This process maps a libssl that is read: a ClientHello it received on a
    socket its OpenSSL never took (a TLS client at its plain-text port, most
    often) is said once, apart, not counted, and hides no handshake it sent
    outside OpenSSL."""
    p, _, _ = probes()
    p.check(os.getpid())
    monkeypatch.setattr(tls, "ATTACH_GRACE_S", 0.0)  # probed long ago
    caplog.set_level("INFO", logger=tls.__name__)
    assert not p.not_visible(os.getpid(), "server", sent=False)
    assert not p.not_visible(os.getpid(), "server", sent=False)
    (received,) = [r.getMessage() for r in caplog.records]
    assert "received a TLS handshake" in received and "plain-text port" in received
    assert p.not_visible(os.getpid(), "server", sent=True)  # news: said once
    assert not p.not_visible(os.getpid(), "server", sent=True)
    (_, unreadable) = [r.getMessage() for r in caplog.records]
    assert (
        "TLS not visible" in unreadable and "OpenSSL calls the uprobes do not cover" in unreadable
    )
