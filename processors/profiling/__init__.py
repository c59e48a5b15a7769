"""CPU profiles: symbolising the kernel's stack counts and encoding them (pprof, OTLP, SVG)."""
