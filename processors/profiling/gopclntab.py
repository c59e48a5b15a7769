"""Go function names from `.gopclntab`, the table the Go runtime itself reads to
name its frames: it stays in binaries stripped of their symbol table (`go build
-ldflags=-s`, common in production images).

Layout (Go 1.18 and later: runtime/symtab.go `pcHeader`, `functab`, `_func`):
a header (magic, pointer size, function count, the text start and the offsets
of the name table and the function table), then per function an entry offset
from the text start and the offset of its `_func`, whose second field is its
name's offset in the name table. Older layouts (Go 1.2 to 1.17) are not read.
Hostile input: every offset is bounds-checked; a malformed table gives nothing.
"""

from __future__ import annotations

import struct

MAGICS = (0xFFFFFFF0, 0xFFFFFFF1)  # Go 1.18-1.19, Go 1.20 and later
MAX_FUNCTIONS = 2_000_000
MAX_NAME = 1024


def go_functions(table: bytes, text_section: int) -> list[tuple[int, int, str]]:
    """(start, size, name) of each function in a `.gopclntab` section's bytes;
    `text_section`: the `.text` address, for tables that leave their text start
    to a relocation (0 in the file)."""
    if len(table) < 8:
        return []
    magic, pad1, pad2, _min_lc, ptr = struct.unpack_from("<IBBBB", table)
    if magic not in MAGICS or pad1 or pad2 or ptr not in (4, 8):
        return []
    if len(table) < 8 + 8 * ptr:
        return []
    fields = struct.unpack_from("<8Q" if ptr == 8 else "<8I", table, 8)
    nfunc, _nfiles, text_start, names_at, _cu, _files, _pcs, funcs_at = fields
    text_start = text_start or text_section
    if not 0 < nfunc <= MAX_FUNCTIONS or funcs_at + (nfunc + 1) * 8 > len(table):
        return []
    functab = struct.unpack_from(f"<{2 * (nfunc + 1)}I", table, funcs_at)
    out = []
    for i in range(nfunc):
        entry, func_at = functab[2 * i], functab[2 * i + 1]
        end = functab[2 * i + 2]
        at = funcs_at + func_at
        if at + 8 > len(table) or end < entry:
            return []
        (name_off,) = struct.unpack_from("<i", table, at + 4)
        start = names_at + name_off
        if name_off < 0 or start >= len(table):
            return []
        stop = table.find(b"\0", start, start + MAX_NAME)
        name = table[start : stop if stop >= 0 else start + MAX_NAME]
        out.append((text_start + entry, end - entry, name.decode(errors="replace")))
    return out
