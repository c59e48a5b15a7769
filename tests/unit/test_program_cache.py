"""The compiled-program cache's pure parts: relinking maps, the file's checks."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from otel_ebpf.receivers.program_cache import (
    KEEP_FILES,
    CacheError,
    directory_problem,
    link_maps,
    load,
    save,
    unlink_maps,
)

INSN = struct.Struct("<BBhi")


def insn(op: int, src: int = 0, dst: int = 0, imm: int = 0) -> bytes:
    return INSN.pack(op, src << 4 | dst, 0, imm)


def ld_map(fd: int, src: int = 1) -> bytes:
    """A 64-bit load of a map descriptor: two instruction slots."""
    return insn(0x18, src=src, dst=1, imm=fd) + insn(0, imm=0)


EXIT = insn(0x95)
CALL = insn(0x85, imm=1)  # bpf_map_lookup_elem


def test_map_descriptors_become_indices_and_back() -> None:
    code = ld_map(7) + CALL + ld_map(9, src=2) + ld_map(7) + EXIT
    stored = unlink_maps(code, {7: 0, 9: 1})
    assert stored == ld_map(0) + CALL + ld_map(1, src=2) + ld_map(0) + EXIT
    assert (
        link_maps(stored, {0: 31, 1: 32})
        == ld_map(31) + CALL + ld_map(32, src=2) + ld_map(31) + EXIT
    )


def test_the_upper_half_of_a_64_bit_constant_is_never_taken_for_an_instruction() -> None:
    # a plain 64-bit constant whose second slot looks like a map load's first
    constant = insn(0x18, imm=5) + insn(0x18, src=1, imm=5)
    assert unlink_maps(constant + EXIT, {}) == constant + EXIT


def test_an_unknown_map_or_load_kind_refuses_rather_than_guess() -> None:
    with pytest.raises(CacheError, match="unknown map"):
        unlink_maps(ld_map(3), {7: 0})
    with pytest.raises(CacheError, match="kind 3"):
        unlink_maps(ld_map(3, src=3), {3: 0})
    with pytest.raises(CacheError, match="whole"):
        unlink_maps(EXIT[:5], {})


IMAGE = {"format": 1, "license": "GPL", "kern_version": 0, "maps": [], "functions": {"f": ""}}


def test_saved_then_loaded_only_by_its_key(tmp_path: Path) -> None:
    save(str(tmp_path), "a" * 64, IMAGE)
    assert load(str(tmp_path), "a" * 64) == IMAGE
    assert load(str(tmp_path), "b" * 64) is None
    assert (tmp_path / f"program-{'a' * 32}.json").stat().st_mode & 0o777 == 0o600


def test_a_file_for_another_key_with_the_same_prefix_is_refused(tmp_path: Path) -> None:
    save(str(tmp_path), "a" * 64, IMAGE)
    with pytest.raises(CacheError, match="another program"):
        load(str(tmp_path), "a" * 32 + "c" * 32)


def test_tampered_truncated_or_exposed_files_are_refused(tmp_path: Path) -> None:
    key = "d" * 64
    path = tmp_path / f"program-{key[:32]}.json"
    save(str(tmp_path), key, IMAGE)
    document = json.loads(path.read_text())
    document["body"] = document["body"].replace('"GPL"', '"MIT"')
    path.write_text(json.dumps(document))
    with pytest.raises(CacheError, match="digest"):
        load(str(tmp_path), key)
    path.write_text(path.read_text()[:40])
    with pytest.raises(CacheError, match="unreadable"):
        load(str(tmp_path), key)
    save(str(tmp_path), key, IMAGE)
    os.chmod(path, 0o666)
    with pytest.raises(CacheError, match="writable by others"):
        load(str(tmp_path), key)
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o777)
    with pytest.raises(CacheError, match="writable by others"):
        load(str(tmp_path), key)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    key = "e" * 64
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    save(str(elsewhere), key, IMAGE)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / f"program-{key[:32]}.json").symlink_to(elsewhere / f"program-{key[:32]}.json")
    with pytest.raises(CacheError):
        load(str(cache), key)


def test_only_the_newest_programs_are_kept(tmp_path: Path) -> None:
    for n in range(KEEP_FILES + 3):
        key = f"{n:032x}" * 2
        save(str(tmp_path), key, IMAGE)
        os.utime(tmp_path / f"program-{key[:32]}.json", (n, n))
    kept = sorted(p.name for p in tmp_path.glob("program-*.json"))
    assert kept == [f"program-{n:032x}.json" for n in range(3, KEEP_FILES + 3)]


def test_doctor_names_a_directory_that_cannot_keep_programs(tmp_path: Path) -> None:
    assert directory_problem(str(tmp_path / "new" / "cache")) is None  # made at first start
    assert directory_problem(str(tmp_path)) is None
    os.chmod(tmp_path, 0o775)
    assert "writable by others" in (directory_problem(str(tmp_path)) or "")
