"""Issue 3's three-tier demo, checked in a real Jaeger the way a user searches it.

frontend (Flask + OpenTelemetry SDK, exporting OTLP through the collector, its
batch processor at the SDK's default 5 s delay; it also calls the downstream
through urllib, which no instrumentation covers) -> backend (uninstrumented)
-> downstream (uninstrumented) and redis-server over raw RESP (a Redis CLIENT
span under the backend's server span). The load comes from `ab` copied as
`demo-loadgen`, which the collector is configured to exclude: the load arrives
as if from off the node, so each request's root is the frontend's own SDK
server span.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo import Frontend, check_tree, load, warm_up
from demo import loadgen as copy_loadgen
from harness import CollectorProcess, Jaeger, PythonServer

SEQUENTIAL, CONCURRENT, CONCURRENCY = 100, 100, 8


@pytest.fixture(scope="module")
def demo_jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """Its own Jaeger: the session's collector traces this node too and exports elsewhere."""
    server = Jaeger(tmp_path_factory.mktemp("demo-jaeger"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_loadgen(tmp_path_factory.mktemp("bin"))


def run_phase(
    jaeger: Jaeger, frontend_service: str, port: int, loadgen: str, n: int, concurrency: int
) -> tuple[int, list[str]]:
    """Drive n requests; (traces found, what is wrong with each wrong one) for this phase."""
    start_us = time.time_ns() // 1000
    load(loadgen, port, n, concurrency)
    end_us = time.time_ns() // 1000 + 1
    found = jaeger.search("downstream", start_us, 8 * n, limit=n * 3, end_us=end_us)
    sdk = frontend_service == "frontend"
    checked = (check_tree(jaeger.trace(t["traceID"]), frontend_service, sdk) for t in found)
    return len(found), [problem for problem in checked if problem]


@pytest.mark.parametrize("instrumented", [True, False], ids=["sdk-frontend", "plain-frontend"])
def test_demo_one_tree_per_request(
    tmp_path: Path,
    demo_jaeger: Jaeger,
    redis: int,
    loadgen: str,
    instrumented: bool,
) -> None:
    jaeger = demo_jaeger
    downstream = PythonServer("downstream")
    backend = PythonServer(
        "backend", script="py_proxy_server.py", args=(str(downstream.port), str(redis))
    )
    collector = CollectorProcess(
        tmp_path / "demo-collector",
        {"otlp/jaeger": {"endpoint": f"127.0.0.1:{jaeger.otlp}", "insecure": True}},
        extra_env={"OTEL_EBPF_EXCLUDE_EXE": "demo-loadgen"},
        otlp_in=True,
    )
    service = "frontend" if instrumented else "frontend-plain"
    frontend = Frontend(service, backend.port, downstream.port, collector, instrumented)
    try:
        if instrumented:  # the collector learns the frontend reports through it
            warm_up(loadgen, frontend, collector)
        seq_found, seq_wrong = run_phase(jaeger, service, frontend.port, loadgen, SEQUENTIAL, 1)
        con_found, con_wrong = run_phase(
            jaeger, service, frontend.port, loadgen, CONCURRENT, CONCURRENCY
        )
        telemetry = collector.telemetry()
    finally:
        frontend.stop()
        assert collector.stop() == 0
        backend.stop()
        downstream.stop()
    print(
        f"\n{service}: complete and correct: sequential {seq_found - len(seq_wrong)}/{SEQUENTIAL}, "
        f"concurrent (c={CONCURRENCY}) {con_found - len(con_wrong)}/{CONCURRENT}; "
        f"eBPF duplicates merged away: {telemetry['spans_merged_away']}"
    )
    assert (seq_found, con_found) == (SEQUENTIAL, CONCURRENT), Counter(seq_wrong + con_wrong)
    assert seq_wrong + con_wrong == [], Counter(seq_wrong + con_wrong)
