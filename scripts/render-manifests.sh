#!/usr/bin/env bash
# Renders the plain manifests in deploy/kubernetes/ from the Helm chart, so the two
# never drift (tests/deploy fails when they differ): bash scripts/render-manifests.sh [DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/deploy/kubernetes}
HELM=$(ls "$ROOT"/.cache/helm/helm-v* | tail -1)
CHART="$ROOT/deploy/helm/otel-ebpf"
mkdir -p "$OUT"
{
  printf '# Rendered from deploy/helm/otel-ebpf with its default values by\n'
  printf '# scripts/render-manifests.sh: kubectl apply -f deploy/kubernetes/otel-ebpf.yaml\n'
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: observability}\n'
  "$HELM" template otel-ebpf "$CHART" --namespace observability
} > "$OUT/otel-ebpf.yaml"
{
  printf '# Rendered from deploy/helm/otel-ebpf -f deploy/helm/examples/sidecar.yaml by\n'
  printf '# scripts/render-manifests.sh: a workload with the collector as its sidecar.\n'
  "$HELM" template shop "$CHART" --namespace shop -f "$ROOT/deploy/helm/examples/sidecar.yaml"
} > "$OUT/sidecar-example.yaml"
