"""The batched map reader against a real BPF hash map: every entry exactly once
and intact, across chunks, read after read from the same buffers."""

from __future__ import annotations

from bcc import BPF
from bcc.libbcc import lib

from otel_ebpf.receivers.map_batches import MapBatches

PROGRAM = """
struct entry { u64 total; u32 small; u32 pad; };
BPF_HASH(entries, u64, struct entry, 256);
"""


def test_every_entry_comes_once_across_chunks_and_reads() -> None:
    bpf = BPF(text=PROGRAM)
    try:
        table = bpf["entries"]
        batches = MapBatches(lib._name, table.map_fd, table.Key, table.Leaf, chunk=4)
        assert list(batches.entries()) == []  # an empty map: the walk ends at once
        expected = {}
        for n in (10, 3):  # more than two chunks, then fewer than one
            table.clear()
            expected = {k: (k * 1_000_003, k % 7) for k in range(1, n + 1)}
            for k, (total, small) in expected.items():
                table[table.Key(k)] = table.Leaf(total, small, 0)
            read = [(key, (v.total, v.small)) for key, v in batches.entries()]
            assert sorted(read) == sorted(expected.items())
    finally:
        bpf.cleanup()
