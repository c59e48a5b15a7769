"""The uninstrumented chain as a user finds it in a real Jaeger: one trace per request.

A (this test process) -> svc-b -> svc-c, none instrumented; 100 sequential and
100 concurrent requests. Jaeger's HTTP API is queried the way its search page
does (`/api/traces?service=...`, `/api/traces/{id}`).
"""

from __future__ import annotations

import time
from typing import Any

from harness import CollectorProcess, Jaeger, PythonServer, get_many

SEQUENTIAL, THREADS, PER_THREAD = 100, 10, 10


def drive(port: int) -> None:
    get_many(port, "/chain", SEQUENTIAL)
    get_many(port, "/chain", PER_THREAD, THREADS)


def complete_and_correct(trace: dict[str, Any]) -> bool:
    """4 spans: A client -> B server -> B client -> C server, each inside its parent."""
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = {s["spanID"]: s for s in trace["spans"]}
    if len(spans) != 4:
        return False
    roots = [s for s in spans.values() if not s["references"]]
    if len(roots) != 1:
        return False
    for span in spans.values():
        for ref in span["references"]:
            parent = spans.get(ref["spanID"])
            if ref["refType"] != "CHILD_OF" or parent is None:
                return False  # an orphan
            if not (
                parent["startTime"] <= span["startTime"]
                and span["startTime"] + span["duration"] <= parent["startTime"] + parent["duration"]
            ):
                return False
    kinds = sorted(
        (services[s["processID"]], next(t["value"] for t in s["tags"] if t["key"] == "span.kind"))
        for s in spans.values()
    )
    return (
        kinds[1:] == [("svc-b", "client"), ("svc-b", "server"), ("svc-c", "server")]
        and kinds[0][1] == "client"
    )


def test_chain_in_jaeger(
    collector: CollectorProcess,
    jaeger: Jaeger,
    chain: tuple[PythonServer, PythonServer],
) -> None:
    middle, _ = chain
    start_us = time.time_ns() // 1000
    drive(middle.port)
    total = SEQUENTIAL + THREADS * PER_THREAD

    found = jaeger.search("svc-c", start_us, 4 * total, limit=total * 2)
    assert len(found) == total  # exactly one trace per request, none split
    good = [t for t in found if complete_and_correct(jaeger.trace(t["traceID"]))]
    assert len(good) == total, f"{total - len(good)} of {total} traces incomplete or wrong"
