#!/usr/bin/env bash
# ruff, then mypy over the package as it installs: receivers/, processors/ and
# bpf/ live at the top level but import as otel_ebpf.*, so mypy reads a tree of
# links that mirrors the installed layout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
rm -rf .lint && mkdir -p .lint/otel_ebpf
for f in otel_ebpf/*.py otel_ebpf/py.typed; do ln -s "$ROOT/$f" ".lint/otel_ebpf/$(basename "$f")"; done
for d in receivers processors bpf; do ln -s "$ROOT/$d" ".lint/otel_ebpf/$d"; done
cd .lint && "$VENV/bin/mypy" -p otel_ebpf
