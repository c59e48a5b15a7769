#!/usr/bin/env bash
# One set-up path for a fresh Debian machine, run as root: system packages,
# kernel headers for bcc, tracefs, and the project's virtual environment.
# Idempotent: every step checks before it acts and says what it did.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  say "must run as root (it installs Debian packages and mounts tracefs)" >&2
  exit 1
fi

# Debian packages: bcc and its Python binding, kernel headers, and the real
# servers and clients the tests and benchmarks drive (gcc: the profiling tests build a C program;
# python3-dev: the headers the event path is compiled against;
# binutils: c++filt, which makes profiles' C++ and Rust names readable;
# python3.11-dbg: the symbols of Debian's stripped _asyncio, for asyncio task context;
# tmux: the terminal `otel-ebpf top` is tested in).
PACKAGES=(python3-bpfcc libbpfcc linux-headers-amd64 nginx-light apache2-utils wrk curl
          redis-server postgresql-15 mariadb-server mariadb-client dnsmasq-base bind9-dnsutils
          nghttp2-server nftables ca-certificates openssl util-linux iproute2 python3-venv
          gcc libc6-dev python3-dev binutils python3.11-dbg tmux)
# Node.js for the profiling test's JIT program: the machine's own, else Debian's
command -v node >/dev/null || PACKAGES+=(nodejs)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi
# The servers enable their system services on install; the project runs its own.
for svc in nginx redis-server postgresql mariadb; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# Kernel headers: bcc compiles against /lib/modules/$(uname -r)/build. Link
# Debian's header tree only where the running kernel has none of its own.
KVER=$(uname -r)
MODDIR=/lib/modules/$KVER
if [ -e "$MODDIR/build/include" ]; then
  say "kernel headers for $KVER present at $MODDIR/build -> $(readlink -f "$MODDIR/build")"
else
  arch_tree=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  common_tree=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$arch_tree" ] || [ -z "$common_tree" ]; then
    say "no kernel header tree under /usr/src; install linux-headers for $KVER" >&2
    exit 1
  fi
  mkdir -p "$MODDIR"
  ln -sfn "$arch_tree" "$MODDIR/build"
  ln -sfn "$common_tree" "$MODDIR/source"
  say "no headers for kernel $KVER: linked $MODDIR/build -> $arch_tree and source -> $common_tree" \
      "(tracepoint programs only read stable tracepoint fields, so a nearby version is enough)"
fi

# tracefs carries the tracepoint formats and ids bcc attaches to.
if [ -e /sys/kernel/tracing/events ]; then
  say "tracefs mounted"
else
  mount -t tracefs nodev /sys/kernel/tracing
  say "mounted tracefs at /sys/kernel/tracing"
fi

# Virtual environment with the package and its test extras.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# bcc is pure Python over libbcc.so, packaged for Debian's interpreter only:
# expose just that package to the venv through a .pth file.
BCC_DIR=$(dirname "$(dpkg -L python3-bpfcc | grep -m1 '/bcc/__init__.py$')")
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$SITE/_otel_ebpf_bcc"
ln -sfn "$BCC_DIR" "$SITE/_otel_ebpf_bcc/bcc"
echo "$SITE/_otel_ebpf_bcc" > "$SITE/otel_ebpf_bcc.pth"
"$VENV/bin/python" -c 'import bcc' || { say "bcc is not importable from $VENV" >&2; exit 1; }

# Pinned by constraints.txt: the versions the suite last passed with.
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  say "installing otel-ebpf with test extras into $VENV (versions of constraints.txt)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
else
  say "virtual environment up to date"
fi
# The event path compiled with mypyc (otel_ebpf/native.py); rebuilt when any
# source changed. Without it the collector runs as Python, at about 2x the CPU.
"$VENV/bin/python" "$ROOT/scripts/build_native.py" \
  || say "the collector will run its event path as Python (see above)" >&2
# The real Jaeger v2 the correlation tests query, Helm for the deploy/ checks and
# the OpenTelemetry Collector of the gateway tests, built from the Go module proxy.
if [ "${OTEL_EBPF_SKIP_JAEGER:-0}" != 1 ]; then
  bash "$ROOT/scripts/build-jaeger.sh"
  bash "$ROOT/scripts/build-helm.sh"
  bash "$ROOT/scripts/build-otelcol.sh"
fi
say "ready: $VENV/bin/otel-ebpf"
