#!/usr/bin/env bash
# Builds the real Jaeger v2 backend from the Go module proxy for the tests, once:
# the binary is cached under .cache/jaeger/ and reused while the version holds.
# `go install module/cmd@version` refuses Jaeger's module (it has a replace
# directive), so a throw-away wrapper module requires it, repeats upstream's
# replace lines and reuses upstream's go.sum: the same build list, verified.
set -euo pipefail
source "$(dirname "$0")/go-tool.sh"
VERSION=${JAEGER_MODULE_VERSION:-v1.76.0}  # module version; its cmd/jaeger is Jaeger v2
go_tool_cached jaeger "$VERSION"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "building Jaeger v2 ($VERSION) from the Go module proxy (a few minutes, once)"
src=$(cd "$work" && "$GO" mod download -json "github.com/jaegertracing/jaeger@$VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
{
  printf 'module otelebpf/jaegerbuild\n\ngo %s\n\n' "$("$GO" env GOVERSION | sed 's/^go//; s/\([0-9]*\.[0-9]*\).*/\1/')"
  printf 'require github.com/jaegertracing/jaeger %s\n\n' "$VERSION"
  grep '^replace ' "$src/go.mod" || true
} > "$work/go.mod"
cp "$src/go.sum" "$work/go.sum"
chmod u+w "$work/go.sum"
(cd "$work" && "$GO" build -trimpath -o "$OUT.tmp" github.com/jaegertracing/jaeger/cmd/jaeger)
mv "$OUT.tmp" "$OUT"
say "built $OUT"
