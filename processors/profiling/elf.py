"""Function symbols of one ELF binary: address -> name, for stack frames.

pyelftools reads the structure (sections, segments, the build-id note, the
debug link); the symbol tables themselves are unpacked in bulk (a binary such as
node has 75,000 dynamic symbols: pyelftools' per-symbol objects took 3.3 s for
them). Every binary is hostile input: a malformed one gives no symbols, never
an exception.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from otel_ebpf.processors.profiling.gopclntab import go_functions

log = logging.getLogger(__name__)

MAX_SYMBOLS = 2_000_000  # per binary; the largest seen here (libLLVM) has ~100,000
MAX_TABLE_BYTES = 256 << 20  # a symbol or string table larger than this is not read
STT_FUNC, _STT_GNU_IFUNC = 2, 10
_SYM64 = struct.Struct("<IBBHQQ")


class Load(NamedTuple):
    offset: int  # in the file
    vaddr: int
    size: int


class ElfInfo(NamedTuple):
    build_id: str  # hex, "" when the binary has none
    debuglink: str  # the separate debug file's name, "" when none
    loads: tuple[Load, ...]
    has_symtab: bool


class Symbols:
    """Sorted function ranges; `name(vaddr)` finds the one holding an address."""

    def __init__(self, entries: list[tuple[int, int, str]]) -> None:
        entries.sort()
        self._starts = [s for s, _, _ in entries]
        self._ends = [s + max(size, 1) for s, size, _ in entries]
        self._names = [n for _, _, n in entries]

    def __len__(self) -> int:
        return len(self._starts)

    def name(self, vaddr: int) -> str | None:
        i = bisect.bisect_right(self._starts, vaddr) - 1
        if i >= 0 and vaddr < self._ends[i]:  # a symbol without a size: its first byte only
            return self._names[i]
        return None

    def merged(self, other: Symbols) -> Symbols:
        return Symbols([*self._entries(), *other._entries()])

    def _entries(self) -> list[tuple[int, int, str]]:
        return [
            (s, e - s, n) for s, e, n in zip(self._starts, self._ends, self._names, strict=True)
        ]


def read_info(f: BinaryIO) -> ElfInfo | None:
    """The structure of the ELF file `f`, None when it is not one (or is malformed)."""
    try:
        elf = ELFFile(f)
        build_id = ""
        note = elf.get_section_by_name(".note.gnu.build-id")
        if note is not None:
            for n in note.iter_notes():  # type: ignore[attr-defined]
                if n["n_type"] == "NT_GNU_BUILD_ID":
                    build_id = str(n["n_desc"])
        debuglink = ""
        link = elf.get_section_by_name(".gnu_debuglink")
        if link is not None:
            debuglink = link.data().split(b"\0", 1)[0].decode(errors="replace")
        loads = load_segments(elf)
        has_symtab = elf.get_section_by_name(".symtab") is not None
        return ElfInfo(build_id, debuglink, loads, has_symtab)
    except (ELFError, OSError, ValueError, KeyError, struct.error, UnicodeError) as exc:
        log.debug("not a readable ELF file: %s", exc)
        return None


def debug_file_candidates(path: str, info: ElfInfo) -> list[str]:
    """Where a separate debug file for `path` may be, by build-id then by debug
    link (GDB's search order); paths as the process that maps it sees them."""
    candidates = []
    if len(info.build_id) > 2:
        b = info.build_id
        candidates.append(f"/usr/lib/debug/.build-id/{b[:2]}/{b[2:]}.debug")
    if info.debuglink and "/" not in info.debuglink:
        d = os.path.dirname(path)
        candidates += [
            f"{d}/{info.debuglink}",
            f"{d}/.debug/{info.debuglink}",
            f"/usr/lib/debug{d}/{info.debuglink}",
        ]
    return [c for c in candidates if c != path]


def read_symbols(f: BinaryIO) -> Symbols:
    """Function symbols of `.symtab` and `.dynsym`, and of `.gopclntab` when the
    binary has no `.symtab` (empty for a malformed file)."""
    entries: list[tuple[int, int, str]] = []
    try:
        elf = ELFFile(f)
        for table in (".symtab", ".dynsym"):
            section = elf.get_section_by_name(table)
            if section is None or section["sh_type"] == "SHT_NOBITS":
                continue
            strings = elf.get_section(section["sh_link"])
            if section["sh_size"] > MAX_TABLE_BYTES or strings["sh_size"] > MAX_TABLE_BYTES:
                log.info("symbol table of %d bytes not read", section["sh_size"])
                continue
            if elf.elfclass == 64 and elf.little_endian:
                _unpack64(section.data(), strings.data(), entries)
            else:  # other classes and byte orders: pyelftools' symbols (slower, rare here)
                entries.extend(
                    (sym["st_value"], sym["st_size"], sym.name)
                    for sym in section.iter_symbols()  # type: ignore[attr-defined]
                    if sym["st_info"]["type"] in ("STT_FUNC", "STT_LOOS") and sym["st_value"]
                )
            if len(entries) >= MAX_SYMBOLS:
                break
        if elf.get_section_by_name(".symtab") is None:  # a stripped Go binary keeps this
            entries.extend(_go_functions(elf))
    except (ELFError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        log.debug("symbols not read: %s", exc)
    return Symbols(entries[:MAX_SYMBOLS])


def named_symbols(
    elf: ELFFile, table: str, names: tuple[bytes, ...], prefix: bool = False
) -> Iterator[tuple[bytes, int, int]]:
    """(name asked for, type, value) of each symbol of `table` named one of `names`
    (with `prefix`: beginning with one), in table order, those valued 0 left out.
    One search of the names says whether any is there; only the entries that
    point at them are looked at (a walk of pyelftools' symbols took 0.2 s for
    postgres's `.dynsym`, on the event path, for every program first seen)."""
    section = elf.get_section_by_name(table)
    if section is None or section["sh_type"] == "SHT_NOBITS":
        return
    strings = elf.get_section(section["sh_link"])
    if section["sh_size"] > MAX_TABLE_BYTES or strings["sh_size"] > MAX_TABLE_BYTES:
        return
    if not (elf.elfclass == 64 and elf.little_endian):  # rare here: pyelftools' symbols
        for sym in section.iter_symbols():  # type: ignore[attr-defined]
            kind = STT_FUNC if sym["st_info"]["type"] == "STT_FUNC" else -1
            for name in names:
                found = sym.name.encode()
                if sym["st_value"] and (found.startswith(name) if prefix else found == name):
                    yield name, kind, sym["st_value"]
        return
    text = strings.data()
    starts: dict[int, bytes] = {}
    for name in names:
        at = text.find(name)
        while at >= 0:  # a name may end another (the linker shares tails)
            end = at + len(name)
            if prefix or text[end : end + 1] == b"\0":
                starts[at] = name
            at = text.find(name, at + 1)
    if not starts:
        return
    data = section.data()
    data = data[: len(data) - len(data) % _SYM64.size]
    for st_name, st_info, _other, _shndx, value, _size in _SYM64.iter_unpack(data):
        if st_name in starts and value:
            yield starts[st_name], st_info & 0xF, value


def _go_functions(elf: ELFFile) -> list[tuple[int, int, str]]:
    table, text = elf.get_section_by_name(".gopclntab"), elf.get_section_by_name(".text")
    if table is None or text is None or table["sh_size"] > MAX_TABLE_BYTES:
        return []
    return go_functions(table.data(), text["sh_addr"])


def _unpack64(data: bytes, strings: bytes, out: list[tuple[int, int, str]]) -> None:
    data = data[: len(data) - len(data) % _SYM64.size]
    for st_name, st_info, _other, shndx, value, size in _SYM64.iter_unpack(data):
        if st_info & 0xF not in (STT_FUNC, _STT_GNU_IFUNC) or not value or not shndx:
            continue
        end = strings.find(b"\0", st_name)
        if end < 0:
            end = len(strings)
        out.append((value, size, strings[st_name:end].decode(errors="replace")))
        if len(out) >= MAX_SYMBOLS:
            return


def load_segments(elf: ELFFile) -> tuple[Load, ...]:
    """The file's PT_LOAD segments: where its addresses' bytes are in the file."""
    return tuple(
        Load(seg["p_offset"], seg["p_vaddr"], seg["p_filesz"])
        for seg in elf.iter_segments()
        if seg["p_type"] == "PT_LOAD"
    )


def code_at(f: BinaryIO, loads: tuple[Load, ...], vaddr: int, size: int) -> bytes:
    """Up to `size` bytes at link-time address `vaddr` (b"": not in the file)."""
    for load in loads:
        if load.vaddr <= vaddr < load.vaddr + load.size:
            f.seek(load.offset + vaddr - load.vaddr)
            return f.read(min(size, load.vaddr + load.size - vaddr))
    return b""


def file_offset_to_vaddr(loads: tuple[Load, ...], offset: int) -> int | None:
    """The link-time address of a byte at `offset` in the file."""
    for load in loads:
        if load.offset <= offset < load.offset + load.size:
            return offset - load.offset + load.vaddr
    return None
