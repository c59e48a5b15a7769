#!/usr/bin/env bash
# Builds Helm from the Go module proxy for the deploy/ checks, once: the binary is
# cached under .cache/helm/ and reused while the version holds.
set -euo pipefail
source "$(dirname "$0")/go-tool.sh"
VERSION=${HELM_MODULE_VERSION:-v3.22.0}
go_tool_cached helm "$VERSION"
say "building Helm ($VERSION) from the Go module proxy (a minute or two, once)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
GOBIN="$work" "$GO" install "helm.sh/helm/v3/cmd/helm@$VERSION"
mv "$work/helm" "$OUT"
say "built $OUT"
