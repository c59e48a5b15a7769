#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the gateway tests run, once, with the
# Collector Builder (ocb) at the release of deploy/collector/builder-config.yaml:
# cached under .cache/otelcol/ and rebuilt when that file changes.
set -euo pipefail
source "$(dirname "$0")/go-tool.sh"
MANIFEST="$ROOT/deploy/collector/builder-config.yaml"
VERSION=$(grep -m1 -o 'otlpreceiver v[0-9.]*' "$MANIFEST" | cut -d' ' -f2)
go_tool_cached otelcol "$VERSION-$(sha1sum "$MANIFEST" | cut -c1-8)"
say "building the OpenTelemetry Collector ($VERSION: OTLP, tail sampling, span metrics,"
say "  service graph, load balancing, Prometheus) from the Go module proxy (5-10 minutes, once)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
GOBIN="$work" "$GO" install "go.opentelemetry.io/collector/cmd/builder@$VERSION"
cp "$MANIFEST" "$work/builder-config.yaml"
(cd "$work" && ./builder --config builder-config.yaml >"$work/builder.log" 2>&1) || {
  tail -40 "$work/builder.log" >&2
  exit 1
}
mv "$work/dist/otelcol-otelebpf" "$OUT"
say "built $OUT in $((SECONDS - started)) s"
