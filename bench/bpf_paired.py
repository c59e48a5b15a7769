"""Two versions of the eBPF programs compared on the same requests: the working
tree's and those of a git revision (`--against`), loaded at once by two
collectors, so every request runs both.

Between rounds of bpf_cost.py the machine's speed drifts (here ±15 %), more
than most changes to the programs move their cost. Loaded together, both
versions see the same moments. The kernel runs the programs attached first
first, and those pay for the cold caches (1 to 2 µs a request here), so the
order alternates and each pair of rounds is averaged: what is left is the
difference. Both collectors run pure Python (programs_from.py swaps the
source), with the default span budget, exporting to a discarding OTLP sink;
nginx (keep-alive) is driven by wrk. Prints each round's ns of eBPF a request
for both and, per pair, the difference; then their medians.
Run as root: `.venv/bin/python bench/bpf_paired.py --against main [--rounds 6 --seconds 4]`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bpf_cost import bpf_stats, program_stats
from common import null_sink, wrk  # also puts tests/kernel/ on the path

from harness import CollectorProcess, Nginx
from otel_ebpf.receivers.sockets import PROGRAM_FILES

HERE = Path(__file__).resolve().parent


def programs_of(revision: str, into: Path) -> Path:
    """The program files as they were at `revision`, in `into`; or `revision`
    itself, a directory of them."""
    if Path(revision).is_dir():
        return Path(revision)
    into.mkdir(parents=True)
    for name in PROGRAM_FILES:
        text = subprocess.run(
            ["git", "-C", str(HERE.parent), "show", f"{revision}:bpf/{name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (into / name).write_text(text)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--against",
        default="HEAD",
        help="a git revision, or a directory of program files (where the working tree's"
        " user space needs a map the revision lacks: its programs with the change undone)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="an even number: pairs of rounds")
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    if args.rounds < 2 or args.rounds % 2:
        parser.error("--rounds: an even number (pairs of rounds), 2 or more")
    tmp = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-bpf-paired-"))
    sides = {
        args.against: programs_of(args.against, tmp / "before"),
        "working tree": HERE.parent / "bpf",
    }
    nginx = Nginx(tmp / "nginx")
    url = nginx.url("/index.html")
    per_request: dict[str, list[float]] = {side: [] for side in sides}
    try:
        with null_sink() as port, bpf_stats():
            exporters = {"otlp": {"endpoint": f"127.0.0.1:{port}", "insecure": True}}
            env = {
                "OTEL_EBPF_NATIVE": "0",
                "OTEL_EBPF_SPAN_BUDGET": None,  # as installed
                "OTEL_EBPF_PROGRAM_CACHE": str(tmp / "programs"),
            }
            for round_ in range(args.rounds):
                order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
                ids: dict[str, set[int]] = {}
                with contextlib.ExitStack() as running:
                    for side in order:
                        known = set(program_stats())
                        collector = CollectorProcess(
                            tmp / f"round-{round_}-{len(ids)}",
                            exporters,
                            extra_env=env,
                            command=(
                                sys.executable,
                                str(HERE / "programs_from.py"),
                                str(sides[side]),
                            ),
                        )
                        running.callback(collector.stop)
                        ids[side] = set(program_stats()) - known
                    before = program_stats()
                    _, _, total = wrk(url, args.seconds, 4)
                    after = program_stats()
                    spent = {
                        side: sum(
                            after[pid][1] - before[pid][1]
                            for pid in ids[side]
                            if pid in before and pid in after
                        )
                        for side in sides
                    }
                for side in sides:
                    per_request[side].append(spent[side] / max(total, 1))
                print(
                    f"round {round_ + 1} ({order[0]} attached first): "
                    + ", ".join(f"{side} {per_request[side][-1]:,.0f}" for side in sides)
                    + " ns of eBPF a request",
                    flush=True,
                )
    finally:
        nginx.stop()
    before_side, after_side = sides
    differences = [
        a - b for a, b in zip(per_request[after_side], per_request[before_side], strict=True)
    ]
    pairs = [(differences[i] + differences[i + 1]) / 2 for i in range(0, len(differences) - 1, 2)]
    for side, values in per_request.items():
        print(f"{side}: median {statistics.median(values):,.0f} ns of eBPF a request")
    print(
        f"working tree against {args.against}: {statistics.median(pairs):+,.0f} ns a request"
        f" (median of {len(pairs)} pairs of rounds: {', '.join(f'{p:+,.0f}' for p in pairs)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
