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

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import HERE, CollectorProcess, Jaeger, PythonServer, free_port, listening, wait_until

SEQUENTIAL, CONCURRENT, CONCURRENCY = 100, 100, 8


@pytest.fixture(scope="module")
def demo_jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """Its own Jaeger: the session's collector traces this node too and exports elsewhere."""
    server = Jaeger(tmp_path_factory.mktemp("demo-jaeger"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bin") / "demo-loadgen"
    shutil.copy(shutil.which("ab") or "/usr/bin/ab", path)
    return str(path)


class Frontend:
    def __init__(
        self,
        service: str,
        backend: int,
        downstream: int,
        collector: CollectorProcess,
        instrumented: bool,
    ) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "OTEL_SERVICE_NAME": service,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.otlp_grpc_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "5000",  # the SDK default: its spans arrive late
            "DEMO_UNINSTRUMENTED": "0" if instrumented else "1",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "demo_frontend.py"),
                str(self.port),
                str(backend),
                str(downstream),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: listening(self.port), 30, "frontend listening")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def load(loadgen: str, port: int, n: int, concurrency: int) -> None:
    out = subprocess.run(
        [loadgen, "-q", "-n", str(n), "-c", str(concurrency), f"http://127.0.0.1:{port}/order"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        f"Complete requests:      {n}" in out.stdout and "Failed requests:        0" in out.stdout
    )


def check_tree(trace: dict[str, Any], frontend: str, sdk: bool) -> str | None:
    """None when the trace is one complete, correct tree; else what is wrong."""
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = {s["spanID"]: s for s in trace["spans"]}

    def kind(s: dict[str, Any]) -> str:
        return next((t["value"] for t in s["tags"] if t["key"] == "span.kind"), "?")

    shape = sorted((services[s["processID"]], kind(s)) for s in spans.values())
    expected = sorted(
        [
            (frontend, "server"),
            (frontend, "client"),  # requests -> backend (the SDK's own span when instrumented)
            (frontend, "client"),  # urllib -> downstream (always seen by the network only)
            ("backend", "server"),
            ("backend", "client"),  # -> downstream
            ("backend", "client"),  # -> redis-server (PING over RESP)
            ("downstream", "server"),  # called by the backend
            ("downstream", "server"),  # called by the frontend
        ]
    )
    if shape != expected:
        return f"shape {shape}"
    roots = [s for s in spans.values() if not s["references"]]
    if len(roots) != 1 or (services[roots[0]["processID"]], kind(roots[0])) != (frontend, "server"):
        return "root is not the frontend's server span"
    if sdk and not any(
        t["key"] == "otel.scope.name" and "flask" in t["value"] for t in roots[0]["tags"]
    ):
        return "root is not the SDK's span"
    for span in spans.values():
        for ref in span["references"]:
            parent = spans.get(ref["spanID"])
            if parent is None:
                return "orphan"
            if not (
                parent["startTime"] <= span["startTime"]
                and span["startTime"] + span["duration"] <= parent["startTime"] + parent["duration"]
            ):
                return f"{services[span['processID']]} {kind(span)} outside its parent's time"
    parent_of = {
        s["spanID"]: spans[s["references"][0]["spanID"]] for s in spans.values() if s["references"]
    }
    want = {
        ("backend", "server"): {(frontend, "client")},
        ("backend", "client"): {("backend", "server")},
        ("downstream", "server"): {("backend", "client"), (frontend, "client")},
        (frontend, "client"): {(frontend, "server")},
    }
    downstream_parents = set()
    for span in spans.values():
        key = (services[span["processID"]], kind(span))
        if key in want:
            parent = parent_of.get(span["spanID"])
            if parent is None or (services[parent["processID"]], kind(parent)) not in want[key]:
                return f"{key} under the wrong parent"
            if key == ("downstream", "server"):
                downstream_parents.add(services[parent["processID"]])
    if downstream_parents != {"backend", frontend}:
        return "the two downstream calls are not under their two callers"
    return None


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
        if instrumented:  # the collector learns the frontend reports through it: warm-up
            # requests until one of its eBPF spans has been merged into its SDK's
            for attempt in range(4):
                load(loadgen, frontend.port, 5, 1)
                try:
                    wait_until(
                        lambda: collector.telemetry()["spans_merged_away"] > 0, 15, "a merge"
                    )
                    break
                except AssertionError:
                    if attempt == 3:
                        raise
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
