"""`otel-ebpf` with the eBPF programs of another directory: bench/bpf_paired.py
runs one of these beside one with the working tree's, to compare two versions of
the programs on the same requests. Pure Python (OTEL_EBPF_NATIVE=0), so the
program source can be swapped here.

    programs_from.py DIRECTORY run --config FILE
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from otel_ebpf import cli
from otel_ebpf.receivers import sockets


def main() -> int:
    if os.environ.get("OTEL_EBPF_NATIVE") != "0":  # compiled, the receiver would not see the swap
        sys.exit("programs_from.py: run it with OTEL_EBPF_NATIVE=0")
    directory = Path(sys.argv[1])
    sockets.program_source = lambda: "".join(  # type: ignore[assignment]
        (directory / name).read_text() for name in sockets.PROGRAM_FILES
    )
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
