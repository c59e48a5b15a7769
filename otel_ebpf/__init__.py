"""otel-ebpf: eBPF socket events in, OpenTelemetry spans out, no application changes."""

__version__ = "0.1.0"

# OpenTelemetry semantic conventions this collector follows (HTTP stable since 1.23).
SEMCONV_VERSION = "1.27.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# The event path's compiled modules, where setup built them (native.py says when).
from otel_ebpf import native as _native  # noqa: E402

_native.install()
