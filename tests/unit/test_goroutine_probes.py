"""Reading which Go programs the goroutine probes support (hostile input: any file)."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_ebpf.model import ProcessExec
from otel_ebpf.receivers import goroutines
from otel_ebpf.receivers.goroutines import go_version, probes_of, stack_check_branch, supported
from otel_ebpf.receivers.sockets import decode

HEADER = b"\xff Go buildinf:"


def buildinfo(version: bytes, flags: int = 2) -> bytes:
    """A .go.buildinfo section as Go 1.18+ writes it: header, pointer size, flags,
    padding to 32 bytes, then the version as a length-prefixed string."""
    return HEADER + bytes([8, flags]) + bytes(16) + bytes([len(version)]) + version + b"\x00"


def test_the_version_is_read_from_the_inline_layout() -> None:
    assert go_version(buildinfo(b"go1.26.8")) == "go1.26.8"
    assert go_version(buildinfo(b"go1.17.13", flags=0)) is None  # pointers: before 1.18
    assert go_version(buildinfo(b"go1.26.8")[:35]) is None  # cut short
    assert go_version(b"not a buildinfo section at all, but long enough to read") is None


def test_register_abi_versions_only() -> None:
    assert supported("go1.18") and supported("go1.26.8") and supported("go1.27.3")
    assert not supported("go1.17.13") and not supported(None) and not supported("devel +abc")


@given(st.binary(max_size=96))
def test_any_bytes_give_a_version_or_none(tail: bytes) -> None:
    for data in (tail, HEADER + tail):
        found = go_version(data)
        assert found is None or len(found) <= 64


def test_a_program_that_is_not_go_is_declined_without_a_reason_to_log() -> None:
    with open(sys.executable, "rb") as f:
        assert probes_of(f) == (None, [], "")
    version, probes, why = probes_of(io.BytesIO(b"\x7fELF" + bytes(60)))
    assert (version, probes) == (None, []) and why.startswith("not readable")


def test_probes_go_on_once_per_file_and_every_exec_registers_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes of one Go file: one attach, a cookie each; a process that runs a
    new program is registered anew (the kernel forgot it at exec); an excluded
    process is not probed; a file no process runs any more is detached."""
    binary = tmp_path / "server"
    binary.write_bytes(b"a Go program")
    for pid in (10, 11, 12):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "exe").symlink_to(binary)
    probes = [(0x401000, "go_goexit1"), (0x402000, "go_round_trip")]
    monkeypatch.setattr(goroutines, "probes_of", lambda _f: ("go1.26.8", probes, ""))
    attached: list[list[tuple[int, str]]] = []
    detached: list[str] = []
    registered: list[tuple[int, int]] = []

    def attach(path: str, wanted: list[tuple[int, str]]) -> list[tuple[int, str]]:
        attached.append(wanted)
        return wanted

    go = goroutines.GoProbes(
        attach,
        lambda path, _probes: detached.append(path),
        lambda pid, cookie: registered.append((pid, cookie)),
        selected=lambda pid: pid != 12,
        proc=str(tmp_path),
    )
    go.start()
    go.check(10)  # seen again: nothing new
    assert attached == [probes]  # once for the file
    assert sorted(registered) in ([(10, 1), (11, 2)], [(10, 2), (11, 1)])  # /proc's order
    assert go.processes == 2
    go.exec(10)
    assert registered[-1] == (10, 3) and len(attached) == 1
    for pid in (10, 11, 12):
        (tmp_path / str(pid) / "exe").unlink()
        (tmp_path / str(pid)).rmdir()
    go.sweep()
    assert go.processes == 0 and len(detached) == 1


def test_the_kernels_exec_record_names_the_process() -> None:
    assert decode(struct.pack("<B3xI", 9, 4242)) == ProcessExec(4242)


def test_the_stack_checks_branch_is_found_in_go_prologues() -> None:
    """Prologues as go1.26 emits them (runtime.goexit1, net/http.(*Request).write):
    the probe goes on the JBE, which the kernel emulates; anything else (an ABI0
    wrapper, a function without a stack check) is probed at its entry."""
    small_frame = bytes.fromhex("493b6610" + "0f868c000000" + "55")
    large_frame = bytes.fromhex("4c8da424e0feffff" + "4d3b6610" + "0f860a0e0000")
    short_lea = bytes.fromhex("4c8d6424f0" + "4d3b6610" + "7640")
    wrapper = bytes.fromhex("450f57ff" + "644c8b3425f8ffffff" + "e9ceaffcff")
    assert stack_check_branch(small_frame) == 4
    assert stack_check_branch(large_frame) == 12
    assert stack_check_branch(short_lea) == 9
    assert stack_check_branch(wrapper) is None
    assert stack_check_branch(small_frame[:4] + b"\x90") is None  # no branch after it
    assert stack_check_branch(b"") is None
