"""A restart loads the compiled programs the last start kept (receivers/program_cache.py)
and traces exactly as a compiled start does: spans on both ends, and the requests
the kernel counts (a program reached by tail call)."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

from test_python_http import client_spans, server_spans

from harness import CollectorProcess, PythonServer, wait_until
from otlp_sink import GrpcSink

KEPT = "compiled eBPF programs kept in"
LOADED = "eBPF programs loaded from"


def served(sink: GrpcSink, service: str) -> int:
    series = sink.metrics.series("http.server.request.duration", **{"service.name": service})
    return sum(
        int(p.value) for a, p in series.items() if dict(a).get("http.route", "/cached") == "/cached"
    )


def test_a_restart_loads_the_kept_programs_and_traces_the_same(
    tmp_path: Path, py_server: PythonServer
) -> None:
    cache = tmp_path / "programs"
    for run, said in enumerate((KEPT, LOADED)):
        sink = GrpcSink()
        collector = CollectorProcess(
            tmp_path / f"run{run}",
            {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "insecure": True}},
            metrics=["otlp"],
            extra_env={"OTEL_EBPF_PROGRAM_CACHE": str(cache), "OTEL_METRIC_EXPORT_INTERVAL": "500"},
        )
        try:
            since = time.time_ns()
            conn = http.client.HTTPConnection("127.0.0.1", py_server.port)
            for _ in range(3):
                conn.request("GET", "/cached")
                conn.getresponse().read()
            conn.close()
            assert len(server_spans(sink, py_server, 3, since)) == 3
            assert len(client_spans(sink, py_server, 3, since)) == 3
            # counted in the kernel, by the program its transfer probes tail-call
            wait_until(lambda s=sink: served(s, "py-backend") >= 3, 30, "3 requests counted")
            assert served(sink, "py-backend") == 3
        finally:
            assert collector.stop() == 0
            sink.stop()
        log = collector.log_path.read_text()
        assert said in log, log
        assert (LOADED in log) == (run == 1)
    (kept,) = cache.iterdir()
    assert kept.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
