"""Go functions named from `.gopclntab` when the binary was stripped of its
symbol table (`go build -ldflags=-s`): the same names at the same addresses as
the symbol table of the same program built unstripped."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_ebpf.processors.profiling.elf import read_info, read_symbols
from otel_ebpf.processors.profiling.gopclntab import go_functions

GO = shutil.which("go") or "/usr/local/go/bin/go"
PROGRAM = """package main

//go:noinline
func alpha(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i * i
	}
	return s
}

func main() { println(alpha(1000)) }
"""


def build(directory: Path, *flags: str) -> Path:
    src = directory / "main.go"
    src.write_text(PROGRAM)
    binary = directory / ("stripped" if flags else "full")
    subprocess.run([GO, "build", *flags, "-o", str(binary), str(src)], check=True, cwd=directory)
    return binary


def go_nm(binary: Path) -> dict[str, int]:
    out = subprocess.run([GO, "tool", "nm", str(binary)], capture_output=True, text=True)
    return {
        f[2]: int(f[0], 16)
        for f in (line.split() for line in out.stdout.splitlines())
        if len(f) == 3 and f[1] == "T"
    }


def test_a_stripped_go_binary_names_its_functions_as_its_symbol_table_would(
    tmp_path: Path,
) -> None:
    truth = go_nm(build(tmp_path))
    stripped = build(tmp_path, "-ldflags=-s")
    with open(stripped, "rb") as f:
        info, symbols = read_info(f), read_symbols(f)
    assert info is not None and not info.has_symtab
    for name in ("main.alpha", "main.main", "runtime.mallocgc"):
        assert symbols.name(truth[name]) == name
        assert symbols.name(truth[name] + 1) == name
    # every function, as the runtime names it: assembly ones without the symbol
    # table's ".abi0", generated ones with a middle dot where it has a full stop
    named = {n: (symbols.name(at) or "").replace("\u00b7", ".") for n, at in truth.items()}
    assert named == {n: n.removesuffix(".abi0") for n in truth}


def test_a_truncated_or_altered_table_gives_all_or_nothing(tmp_path: Path) -> None:
    with open(build(tmp_path, "-ldflags=-s"), "rb") as f:
        elf = ELFFile(f)
        table = elf.get_section_by_name(".gopclntab").data()
        text = elf.get_section_by_name(".text")["sh_addr"]
    whole = go_functions(table, text)
    assert len(whole) > 1000
    for cut in (0, 7, 40, len(table) // 3, len(table) - 1):
        assert go_functions(table[:cut], text) in ([], whole)  # all or nothing
    assert go_functions(b"\xf1\xff\xff\xff\0\0\1\x08" + struct.pack("<Q", 1 << 40), text) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from([b"\xf0\xff\xff\xff", b"\xf1\xff\xff\xff"]))
def test_hostile_tables_never_raise(rest: bytes, magic: bytes) -> None:
    go_functions(magic + b"\0\0\1\x08" + rest, 0x401000)
    go_functions(rest, 0x401000)
