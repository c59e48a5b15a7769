"""Issue 3's three-tier demo, shared by the tests that run it: the SDK-instrumented
frontend (demo_frontend.py), `ab` as its load, and what a complete trace of one
request looks like.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import HERE, CollectorProcess, free_port, listening, wait_until


def loadgen(directory: Path) -> str:
    """`ab` copied as `demo-loadgen`: a collector told to exclude that executable
    sees the load as if it came from off the node."""
    path = directory / "demo-loadgen"
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


def load(loadgen: str, port: int, n: int, concurrency: int, query: str = "") -> None:
    """n requests to the frontend's /order (`?query`), all answered."""
    url = f"http://127.0.0.1:{port}/order" + (f"?{query}" if query else "")
    out = subprocess.run(
        [loadgen, "-q", "-n", str(n), "-c", str(concurrency), url],
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


def warm_up(loadgen: str, frontend: Frontend, collector: CollectorProcess) -> None:
    """Requests until one of the frontend's eBPF spans has been merged into its
    SDK's: from then on the collector knows the frontend reports through it."""
    for attempt in range(4):
        load(loadgen, frontend.port, 5, 1)
        try:
            wait_until(lambda: collector.telemetry()["spans_merged_away"] > 0, 15, "a merge")
            return
        except AssertionError:
            if attempt == 3:
                raise
