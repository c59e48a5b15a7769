# Sourced by the scripts that build test tools from the Go module proxy, once:
# `go_tool_cached NAME VERSION` sets OUT (the cached binary under .cache/NAME/) and
# GO, and exits the caller early when the binary is already there.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'setup: %s\n' "$*"; }

go_tool_cached() {
  local name=$1 version=$2
  OUT="$ROOT/.cache/$name/$name-$version"
  if [ -x "$OUT" ]; then
    say "$name ($version) cached at $OUT"
    exit 0
  fi
  GO=$(command -v go || echo /usr/local/go/bin/go)
  if [ ! -x "$GO" ]; then
    say "Go is needed to build $name for the tests and was not found" >&2
    exit 1
  fi
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod
  mkdir -p "$(dirname "$OUT")"
}
