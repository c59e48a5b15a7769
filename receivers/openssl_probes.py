"""Where the OpenSSL uprobes sit in one libssl file: on instructions the kernel emulates.

A uprobe on an instruction the kernel must step out of line (a debug trap) cost
24-28 us a hit on this project's machines; on one it emulates (a push, a
branch, a call) 0.6-0.7 us (bench/uprobe_cost.py). OpenSSL 3.0's `SSL_read`
and `SSL_write` begin with `sub $0x18,%rsp`, stepped out of line, and an HTTPS
request makes about five such calls. Both, and their `_ex` forms, call one
internal function each (`ssl_read_internal`, `ssl_write_internal`: `(SSL *,
buf, size_t num, size_t *done)`, the `_ex` forms' signature) that begins with
a push: the probes sit there when that can be shown from the file's code, and
at the exported entries otherwise (another build, another version, a library
that inlined them), as before. The internal function is found as the one
target that the first calls of the exported pair share; a uprobe at a
function's entry (or just past its `endbr64`) also keeps the stack as the
return probe needs it.
"""

from __future__ import annotations

import logging
from typing import BinaryIO, NamedTuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otel_ebpf.processors.profiling.elf import Load, named_symbols

log = logging.getLogger(__name__)


class OpenSslProbe(NamedTuple):
    covers: tuple[str, ...]  # the exported functions whose calls it sees
    address: int | None  # virtual address in the file (None: the exported symbol's)
    enter: str  # programs in bpf/tls.bpf.c
    exit: str

    def where(self) -> dict[str, int | str]:
        """bcc's arguments for where it sits: its address, or its symbol's."""
        return {"sym": self.covers[0]} if self.address is None else {"addr": self.address}


# The exported entries: (symbol, entry program, return program).
ENTRY_PROBES = (
    ("SSL_do_handshake", "ssl_handshake_enter", "ssl_exit_plain"),
    ("SSL_write", "ssl_write_enter", "ssl_exit_plain"),
    ("SSL_read", "ssl_read_enter", "ssl_exit_plain"),
    ("SSL_write_ex", "ssl_write_ex_enter", "ssl_exit_ex"),
    ("SSL_read_ex", "ssl_read_ex_enter", "ssl_exit_ex"),
)
# The exported pairs that share an internal function with the `_ex` signature.
_INTERNAL = (
    (("SSL_read", "SSL_read_ex"), "ssl_read_ex_enter"),
    (("SSL_write", "SSL_write_ex"), "ssl_write_ex_enter"),
)
# OpenSSL 3.3 gave ssl_write_internal a flags argument before `written`
# (SSL_write_ex2): its writes keep the exported entries.
_WRITE_FLAGS_SYMBOL = b"SSL_write_ex2"
_SCAN_BYTES = 64  # of an exported function, for its first call
_ENDBR64 = b"\xf3\x0f\x1e\xfa"


def emulated_entry(code: bytes) -> int | None:
    """The offset in a function's first bytes where a uprobe is emulated and the
    stack is still the entry's: 0 on a push (`push %reg`, `push %r8-15`), 4 on a
    push after `endbr64`; None otherwise."""
    at = len(_ENDBR64) if code.startswith(_ENDBR64) else 0
    push = code[at + 1 : at + 2] if code[at : at + 1] == b"\x41" else code[at : at + 1]  # REX.B
    return at if push and 0x50 <= push[0] <= 0x57 else None


def call_targets(code: bytes, address: int) -> list[int]:
    """Targets of every `call rel32` byte pattern in `code` (at `address`), in order.
    A byte scan, not a decoder: a target counts only where both functions of a
    pair agree on it, which a misread byte does not."""
    targets = []
    at = code.find(b"\xe8")
    while 0 <= at <= len(code) - 5:
        offset = int.from_bytes(code[at + 1 : at + 5], "little", signed=True)
        targets.append(address + at + 5 + offset)
        at = code.find(b"\xe8", at + 1)
    return targets


def shared_first_call(a: list[int], b: list[int], text: range) -> int | None:
    """The first target within `text` of each list, when it is the same one."""
    first_a = next((t for t in a if t in text), None)
    first_b = next((t for t in b if t in text), None)
    return first_a if first_a is not None and first_a == first_b else None


def openssl_probes(path: str) -> list[OpenSslProbe]:
    """The probes for one libssl file: on the internal read and write functions
    where they can be shown, at the exported entries otherwise."""
    entries = [OpenSslProbe((s,), None, enter, exit_) for s, enter, exit_ in ENTRY_PROBES]
    try:
        with open(path, "rb") as f:
            internal = _internal_probes(f)
    except (ELFError, OSError, ValueError, KeyError, IndexError) as exc:
        log.debug("%s: code not read (%s); probes at the exported entries", path, exc)
        return entries
    covered = {name for probe in internal for name in probe.covers}
    return internal + [p for p in entries if p.covers[0] not in covered]


def _internal_probes(f: BinaryIO) -> list[OpenSslProbe]:
    elf = ELFFile(f)
    if elf["e_machine"] != "EM_X86_64":
        return []
    text = elf.get_section_by_name(".text")
    if text is None:
        return []
    text_range = range(text["sh_addr"], text["sh_addr"] + text["sh_size"])
    wanted = tuple(name.encode() for pair, _ in _INTERNAL for name in pair)
    found = {
        name.decode(): value
        for name, _, value in named_symbols(elf, ".dynsym", (*wanted, _WRITE_FLAGS_SYMBOL))
    }
    loads = [
        Load(seg["p_offset"], seg["p_vaddr"], seg["p_filesz"])
        for seg in elf.iter_segments()
        if seg["p_type"] == "PT_LOAD"
    ]
    probes = []
    for (exported, ex_form), enter in _INTERNAL:
        if enter == "ssl_write_ex_enter" and _WRITE_FLAGS_SYMBOL.decode() in found:
            continue
        if exported not in found or ex_form not in found:
            continue
        target = shared_first_call(
            call_targets(_code(f, loads, found[exported], _SCAN_BYTES), found[exported]),
            call_targets(_code(f, loads, found[ex_form], _SCAN_BYTES), found[ex_form]),
            text_range,
        )
        if target is None:
            continue
        offset = emulated_entry(_code(f, loads, target, 8))
        if offset is not None:
            probes.append(OpenSslProbe((exported, ex_form), target + offset, enter, "ssl_exit_ex"))
    return probes


def _code(f: BinaryIO, loads: list[Load], vaddr: int, size: int) -> bytes:
    for load in loads:
        if load.vaddr <= vaddr < load.vaddr + load.size:
            f.seek(load.offset + vaddr - load.vaddr)
            return f.read(min(size, load.vaddr + load.size - vaddr))
    return b""
