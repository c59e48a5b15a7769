"""Where the OpenSSL uprobes sit in one libssl file: on instructions the kernel emulates.

A uprobe on an instruction the kernel must step out of line (a debug trap) cost
15-28 us a hit on this project's machines; on one it emulates (a push, a
branch, a call) 0.6-0.7 us (bench/uprobe_cost.py). OpenSSL 3.0's `SSL_read`
and `SSL_write` begin with `sub $0x18,%rsp`, stepped out of line, and an HTTPS
request makes about five such calls. Both, and their `_ex` forms, call one
internal function each (`ssl_read_internal`, `ssl_write_internal`: `(SSL *,
buf, size_t num, size_t *done)`, the `_ex` forms' signature, with a flags
argument before `done` for writes since 3.3) that begins with a push: the
probes sit there when that can be shown from the file's code, and at the
exported entries otherwise (another build, a library that inlined them), as
before. The internal function is found as the one target that the first calls
of an exported pair share; a uprobe at a function's entry (or just past its
`endbr64`) also keeps the stack as the return probe needs it.
"""

from __future__ import annotations

import logging
from typing import BinaryIO, NamedTuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otel_ebpf.processors.profiling.elf import code_at, load_segments, named_symbols

log = logging.getLogger(__name__)


class OpenSslProbe(NamedTuple):
    covers: tuple[str, ...]  # the exported functions whose calls it sees
    address: int | None  # virtual address in the file (None: the exported symbol's)
    enter: str  # programs in bpf/tls.bpf.c
    exit: str

    def traps(self) -> bool:
        """A read or write probe left at its exported entry. (SSL_do_handshake's
        always is: it runs once a connection, and begins with a push in the
        builds seen.)"""
        return self.address is None and self.enter != _HANDSHAKE

    def where(self) -> dict[str, int | str]:
        """bcc's arguments for where it sits: its address, or its symbol's."""
        return {"sym": self.covers[0]} if self.address is None else {"addr": self.address}


_HANDSHAKE = "ssl_handshake_enter"
# The exported entries: (symbol, entry program, return program).
ENTRY_PROBES = (
    ("SSL_do_handshake", _HANDSHAKE, "ssl_exit_plain"),
    ("SSL_write", "ssl_write_enter", "ssl_exit_plain"),
    ("SSL_read", "ssl_read_enter", "ssl_exit_plain"),
    ("SSL_write_ex", "ssl_write_ex_enter", "ssl_exit_ex"),
    ("SSL_read_ex", "ssl_read_ex_enter", "ssl_exit_ex"),
)
# The internal functions, each shown by the first call of an exported pair,
# with the program that reads its arguments (SSL *, buf, size_t num, size_t
# *done) and the libraries it is for: any (None), before OpenSSL 3.3 (False),
# or since (True), when SSL_write_ex2 came and a flags argument before the
# written count with it.
_INTERNAL = (
    (("SSL_read", "SSL_read_ex"), "ssl_read_ex_enter", None),
    (("SSL_write", "SSL_write_ex"), "ssl_write_ex_enter", False),
    (("SSL_write", "SSL_write_ex2"), "ssl_write_ex2_enter", True),
)
_FLAGS_SINCE_3_3 = "SSL_write_ex2"
_EXPORTED = ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", _FLAGS_SINCE_3_3)
_SCAN_BYTES = 64  # of an exported function, for its first call
_ENDBR64 = b"\xf3\x0f\x1e\xfa"


def emulated_entry(code: bytes) -> int | None:
    """The offset in a function's first bytes where a uprobe is emulated and the
    stack is still the entry's: 0 on a push (`push %reg`, `push %r8-15`), 4 on a
    push after `endbr64`; None otherwise."""
    at = len(_ENDBR64) if code.startswith(_ENDBR64) else 0
    push = code[at + 1 : at + 2] if code[at : at + 1] == b"\x41" else code[at : at + 1]  # REX.B
    return at if push and 0x50 <= push[0] <= 0x57 else None


def first_branch(code: bytes, address: int, text: range) -> int | None:
    """The first target in `text` of a `call rel32` or `jmp rel32` byte pattern in
    `code` (at `address`). A byte scan, not a decoder: a target counts only
    where two functions agree on it, which a misread byte does not."""
    for at, byte in enumerate(code[: len(code) - 4]):
        if byte in (0xE8, 0xE9):
            target = address + at + 5 + int.from_bytes(code[at + 1 : at + 5], "little", signed=True)
            if target in text:
                return target
    return None


def openssl_probes(path: str) -> list[OpenSslProbe]:
    """The probes for one libssl file: on the internal read and write functions
    where they can be shown, at the exported entries otherwise (a call through
    both is reported once, by the outer: bpf/tls.bpf.c counts the depth)."""
    entries = exported_entries()
    try:
        with open(path, "rb") as f:
            internal = _internal_probes(f)
    except (ELFError, OSError, ValueError, KeyError, IndexError) as exc:
        log.debug("%s: code not read (%s); probes at the exported entries", path, exc)
        return entries
    covered = {name for probe in internal for name in probe.covers}
    return internal + [p for p in entries if p.covers[0] not in covered]


def exported_entries() -> list[OpenSslProbe]:
    """Every probe at its exported entry (as before the internal functions were found)."""
    return [OpenSslProbe((s,), None, enter, exit_) for s, enter, exit_ in ENTRY_PROBES]


def placement(probes: list[OpenSslProbe]) -> str:
    """Where the read and write probes sit, for a log line and `doctor`."""
    at_entries = [p.covers[0] for p in probes if p.traps()]
    if not any(p.enter != _HANDSHAKE for p in probes):
        return "no read or write function probed"
    if not at_entries:
        return "reads and writes probed on instructions the kernel emulates"
    return (
        f"{', '.join(at_entries)} probed at the exported entry: each call may trap"
        " (an instruction the kernel steps out of line, ~25 us on a virtual machine)"
    )


def _internal_probes(f: BinaryIO) -> list[OpenSslProbe]:
    elf = ELFFile(f)
    if elf["e_machine"] != "EM_X86_64":
        return []
    text = elf.get_section_by_name(".text")
    if text is None:
        return []
    text_range = range(text["sh_addr"], text["sh_addr"] + text["sh_size"])
    found = {
        name.decode(): value
        for name, _, value in named_symbols(elf, ".dynsym", tuple(n.encode() for n in _EXPORTED))
    }
    loads = load_segments(elf)
    first = {
        name: first_branch(code_at(f, loads, address, _SCAN_BYTES), address, text_range)
        for name, address in found.items()
    }
    since_3_3 = _FLAGS_SINCE_3_3 in found
    probes = []
    for pair, enter, version in _INTERNAL:
        if version is not None and version != since_3_3:
            continue
        target = first.get(pair[0])
        if target is None or first.get(pair[1]) != target:
            continue
        offset = emulated_entry(code_at(f, loads, target, 8))
        if offset is None:
            continue
        # and the exported functions that go through one of the pair (SSL_write_ex
        # jumps to SSL_write_ex2 since 3.3)
        through = {target, *(found[name] for name in pair)}
        covers = [name for name in _EXPORTED if name in pair or first.get(name) in through]
        probes.append(OpenSslProbe(tuple(covers), target + offset, enter, "ssl_exit_ex"))
    return probes
