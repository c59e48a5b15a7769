"""OTLP/gRPC receiver (traces and metrics) that discards, for benchmarks:
`otlp_null_sink.py PORT`. Its own process, so its CPU is not the collector's."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "kernel"))
from otlp_sink import GrpcSink

if __name__ == "__main__":
    sink = GrpcSink(port=int(sys.argv[1]), keep=False)
    while True:
        time.sleep(3600)
