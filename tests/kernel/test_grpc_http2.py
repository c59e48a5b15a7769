"""gRPC (grpcio, unary, server streaming, a failing status) and plain HTTP/2
(curl with prior knowledge against nghttpd), both sides of each call."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import HERE, CollectorProcess, Jaeger, PythonServer, free_port, listening, wait_until
from otlp_sink import CLIENT, SERVER, GrpcSink, Span


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[PythonServer]:
    server = PythonServer("grpc-server", script="py_grpc_server.py")
    yield server
    server.stop()


def spans_of(sink: GrpcSink, since: int, port: int) -> list[Span]:
    return [
        s
        for s in list(sink.store.spans)
        if s.start_ns >= since and s.attributes.get("server.port") == port
    ]


def test_grpc_unary_streaming_and_failing_status_on_both_sides(
    collector: CollectorProcess, grpc_sink: GrpcSink, grpc_server: PythonServer
) -> None:
    since = time.time_ns()
    subprocess.run(
        [sys.executable, str(HERE / "grpc_calls.py"), str(grpc_server.port)],
        env={**os.environ, "OTEL_SERVICE_NAME": "grpc-client"},
        check=True,
    )
    wait_until(lambda: len(spans_of(grpc_sink, since, grpc_server.port)) >= 12, 30, "12 spans")
    time.sleep(1)
    spans = spans_of(grpc_sink, since, grpc_server.port)
    counts = Counter((s.service, s.kind, s.name) for s in spans)
    for service, kind in (("grpc-client", CLIENT), ("grpc-server", SERVER)):
        assert counts[(service, kind, "demo.Greeter/SayHello")] == 3
        assert counts[(service, kind, "demo.Greeter/Count")] == 2
        assert counts[(service, kind, "demo.Greeter/Fail")] == 1
    assert len(spans) == 12
    for s in spans:
        assert s.attributes["rpc.system.name"] == "grpc"
        assert s.attributes["rpc.method"] == s.name
        failed = s.name == "demo.Greeter/Fail"
        assert s.attributes.get("rpc.response.status_code") == ("NOT_FOUND" if failed else "OK"), s
        # NOT_FOUND is the caller's error, not the server's (RPC conventions).
        assert s.status_code == (2 if failed and s.kind == CLIENT else 0), s
    client = next(s for s in spans if s.kind == CLIENT and s.name == "demo.Greeter/Fail")
    assert client.attributes["error.type"] == "NOT_FOUND"


def test_curl_http2_prior_knowledge_against_nghttpd(
    collector: CollectorProcess, grpc_sink: GrpcSink, tmp_path: Path
) -> None:
    (tmp_path / "index.html").write_text("hello over h2\n")
    port = free_port()
    nghttpd = subprocess.Popen(
        [shutil.which("nghttpd") or "nghttpd", "--no-tls", "-d", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: listening(port), 10, "nghttpd listening")
        since = time.time_ns()
        for path, code in (("/index.html", "200"), ("/missing", "404")):
            out = subprocess.run(
                [
                    "curl",
                    "-s",
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{http_version}",
                    f"http://127.0.0.1:{port}{path}",
                ],
                capture_output=True,
                text=True,
            ).stdout
            assert out == f"{code} 2"
        wait_until(lambda: len(spans_of(grpc_sink, since, port)) >= 4, 30, "4 h2 spans")
        time.sleep(0.5)
        spans = spans_of(grpc_sink, since, port)
    finally:
        nghttpd.terminate()
        nghttpd.wait(10)
    got = Counter(
        (s.service, s.kind, s.attributes["url.path"], s.attributes["http.response.status_code"])
        for s in spans
    )
    assert got == {
        ("curl", CLIENT, "/index.html", 200): 1,
        ("curl", CLIENT, "/missing", 404): 1,
        ("nghttpd", SERVER, "/index.html", 200): 1,
        ("nghttpd", SERVER, "/missing", 404): 1,
    }
    assert {s.attributes["network.protocol.version"] for s in spans} == {"2"}
    assert all(s.attributes["http.request.method"] == "GET" for s in spans)


def test_the_collectors_own_otlp_exports_are_never_traced(
    collector: CollectorProcess, grpc_sink: GrpcSink, grpc_server: PythonServer, jaeger: Jaeger
) -> None:
    """Its exports are gRPC too: tracing their receiving end would feed on itself."""
    subprocess.run(
        [sys.executable, str(HERE / "grpc_calls.py"), str(grpc_server.port)],
        env={**os.environ, "OTEL_SERVICE_NAME": "grpc-client"},
        check=True,
    )
    time.sleep(3)  # at least one export cycle after gRPC parsing was exercised
    ours = {grpc_sink.port, jaeger.otlp}  # where this collector exports to
    exports = [
        s
        for s in list(grpc_sink.store.spans)
        if "TraceService" in s.name and s.attributes.get("server.port") in ours
    ]
    assert exports == []
