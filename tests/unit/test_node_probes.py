"""Finding Node's callback entry (pure file reading; the kernel tests run the probes)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from elftools.elf.elffile import ELFFile

from otel_ebpf.receivers.node_callbacks import CALLBACK_SYMBOL, callback_address, probes_at


def node_runtime() -> str:
    """The file holding Node's runtime: the executable, or the libnode it links."""
    node = str(Path(shutil.which("node") or "/usr/bin/node").resolve())
    if callback_address(node) is not None:
        return node
    libs = sorted(Path("/usr/lib").glob("**/libnode.so*"))
    return str(libs[0]) if libs else node


def test_nodes_callback_entry_is_found_in_its_dynamic_symbols() -> None:
    address = callback_address(node_runtime())
    assert address is not None and address > 0
    on_return, on_entry = probes_at(address)
    assert on_return.on_return and not on_entry.on_return  # the return probe goes on first
    assert on_return.address == on_entry.address == address


def test_the_raw_symbol_table_gives_what_pyelftools_gives_symbol_by_symbol() -> None:
    path = node_runtime()
    with open(path, "rb") as f:
        walked = next(
            s["st_value"]
            for s in ELFFile(f).get_section_by_name(".dynsym").iter_symbols()
            if s.name.startswith(CALLBACK_SYMBOL) and s["st_value"]
        )
    assert callback_address(path) == walked


def test_anything_else_is_not_a_node_runtime(tmp_path: Path) -> None:
    assert callback_address(sys.executable) is None
    junk = tmp_path / "node"
    junk.write_bytes(b"\x7fELF" + bytes(60))
    assert callback_address(str(junk)) is None
    assert callback_address(str(tmp_path / "missing")) is None
