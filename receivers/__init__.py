"""Receivers: where telemetry enters the pipeline (eBPF sockets today)."""
