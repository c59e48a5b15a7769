"""Reading which Go programs the goroutine probes support (hostile input: any file)."""

from __future__ import annotations

import io
import sys

from hypothesis import given
from hypothesis import strategies as st

from otel_ebpf.receivers.goroutines import go_version, probes_of, supported

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
