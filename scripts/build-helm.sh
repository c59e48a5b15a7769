#!/usr/bin/env bash
# Builds Helm from the Go module proxy for the deploy/ checks, once: the binary is
# cached under .cache/helm/ and reused while the version holds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${HELM_MODULE_VERSION:-v3.22.0}
OUT="$ROOT/.cache/helm/helm-$VERSION"
say() { printf 'setup: %s\n' "$*"; }

if [ -x "$OUT" ]; then
  say "Helm ($VERSION) cached at $OUT"
  exit 0
fi
GO=$(command -v go || echo /usr/local/go/bin/go)
if [ ! -x "$GO" ]; then
  say "Go is needed to build Helm for the deploy checks and was not found" >&2
  exit 1
fi
say "building Helm ($VERSION) from the Go module proxy (a minute or two, once)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
GOTOOLCHAIN=local GOFLAGS=-mod=mod GOBIN="$work" "$GO" install "helm.sh/helm/v3/cmd/helm@$VERSION"
mkdir -p "$(dirname "$OUT")"
mv "$work/helm" "$OUT"
say "built $OUT"
