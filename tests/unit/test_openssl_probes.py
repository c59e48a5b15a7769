"""Where the OpenSSL uprobes sit: on an instruction the kernel emulates, found
from the library's own code, or at the exported entries when it cannot be shown."""

from __future__ import annotations

import ssl
from pathlib import Path

from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_ebpf.receivers.openssl_probes import (
    ENTRY_PROBES,
    emulated_entry,
    first_branch,
    openssl_probes,
    placement,
)
from otel_ebpf.receivers.tls import host_libraries

ENDBR64 = b"\xf3\x0f\x1e\xfa"
SUB_RSP = b"\x48\x83\xec\x18"  # sub $0x18,%rsp: stepped out of line


def test_a_push_is_probed_where_it_stands_and_after_endbr64() -> None:
    assert emulated_entry(b"\x41\x55\x41\x54") == 0  # push %r13
    assert emulated_entry(b"\x53\x48\x83\xec\x30") == 0  # push %rbx
    assert emulated_entry(ENDBR64 + b"\x41\x57") == 4
    assert emulated_entry(ENDBR64 + b"\x55") == 4


def test_anything_else_keeps_the_exported_entry() -> None:
    for code in (SUB_RSP, ENDBR64 + SUB_RSP, b"", b"\x41", ENDBR64, b"\x41\x58", b"\x48\x55"):
        assert emulated_entry(code) is None, code


def call(at: int, target: int, opcode: bytes = b"\xe8") -> bytes:
    return opcode + (target - (at + 5)).to_bytes(4, "little", signed=True)


def test_the_first_call_or_jump_into_text_is_read_relative_to_the_next_instruction() -> None:
    text = range(0x1000, 0x9000)
    plt = 0x500  # ERR_new@plt and the like: outside .text
    code = SUB_RSP + b"\x85\xd2" + call(0x1006, plt) + b"\x85\xc0" + call(0x100D, 0x2000)
    assert first_branch(code, 0x1000, text) == 0x2000
    jump = b"\x49\x89\xc8\x31\xc9" + call(0x3005, 0x4000, b"\xe9")  # mov %rcx,%r8; xor; jmp
    assert first_branch(jump, 0x3000, text) == 0x4000
    assert first_branch(b"\x90\xe8\x00\x10", 0x1000, text) is None  # cut short: no target
    assert first_branch(call(0x1000, plt), 0x1000, text) is None


def test_a_file_that_is_not_a_library_gets_the_exported_entries(tmp_path: Path) -> None:
    probes = openssl_probes(__file__)
    entries = [(p.covers, p.address, p.enter, p.exit) for p in probes]
    assert entries == [((s,), None, enter, exit_) for s, enter, exit_ in ENTRY_PROBES]
    assert placement(probes).startswith(
        "SSL_write, SSL_read, SSL_write_ex, SSL_read_ex probed at the exported entry: each call"
    )  # said at info level, and by doctor
    assert placement(probes[:1]) == "no read or write function probed"  # SSL_do_handshake's only
    assert placement([]) == "no read or write function probed"
    assert len(openssl_probes(str(tmp_path / "gone.so"))) == len(ENTRY_PROBES)


def test_the_systems_libssl_is_probed_on_pushes_for_every_read_and_write() -> None:
    assert ssl.OPENSSL_VERSION.startswith("OpenSSL 3.0")  # Debian 12's, which the benches run
    path = host_libraries()[0]
    probes = openssl_probes(path)
    assert placement(probes) == "reads and writes probed on instructions the kernel emulates"
    covered = sorted(name for p in probes for name in p.covers)
    assert covered == sorted(s for s, _, _ in ENTRY_PROBES)  # every call seen, once
    internal = {p.covers: p for p in probes if p.address is not None}
    assert set(internal) == {("SSL_read", "SSL_read_ex"), ("SSL_write", "SSL_write_ex")}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for probe in internal.values():
            assert probe.address is not None and probe.exit == "ssl_exit_ex"
            for seg in elf.iter_segments():
                start = seg["p_vaddr"]
                if seg["p_type"] == "PT_LOAD" and start <= probe.address < start + seg["p_filesz"]:
                    f.seek(seg["p_offset"] + probe.address - start)
                    assert emulated_entry(f.read(8)) == 0
                    break
            else:
                raise AssertionError(f"{probe.address:#x} is in no loaded segment")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, 1 << 20), flips=st.lists(st.tuples(st.integers(0), st.integers(0, 255))))
def test_a_cut_or_corrupted_library_gives_probes_never_an_exception(
    tmp_path: Path, cut: int, flips: list[tuple[int, int]]
) -> None:
    code = bytearray(Path(host_libraries()[0]).read_bytes()[:cut])
    for at, value in flips:
        if code:
            code[at % len(code)] = value
    copy = tmp_path / "libssl.so.3"
    copy.write_bytes(code)
    probes = openssl_probes(str(copy))
    assert {name for p in probes for name in p.covers} >= {s for s, _, _ in ENTRY_PROBES}
