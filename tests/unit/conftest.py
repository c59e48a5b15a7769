"""Fixtures shared by unit tests."""

from __future__ import annotations

import pytest

from otel_ebpf.config import load
from otel_ebpf.pipeline import Collector


@pytest.fixture
def collector() -> Collector:
    """A real Collector, built but not run: no probes attached, nothing exported."""
    env = {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EBPF_HEALTH_ENDPOINT": "127.0.0.1:0",  # any free port: tests may overlap
    }
    return Collector(load(env=env))
