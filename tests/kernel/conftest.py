"""Real-kernel fixtures: one collector for the session, exporting to real OTLP receivers.

These tests need root, BPF and the servers that scripts/setup.sh installs
(`make test` runs it first). They fail, not skip, when those are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import (
    STARTED,
    CollectorProcess,
    Jaeger,
    MariaDB,
    Nginx,
    Postgres,
    PythonServer,
    free_port,
    listening,
    self_signed_certificate,
    wait_until,
)
from otlp_sink import GrpcSink, HttpSink

COLLECTOR_LOG_LINES = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """A failing test's report ends with what the collector said and counted: CI
    keeps the report, not the collector's log file."""
    report = yield
    if not (report.failed and call.when == "call"):
        return report
    collector = getattr(item, "funcargs", {}).get("collector")
    own = [c for c in STARTED if c is not collector and c.test.startswith(f"{item.nodeid} ")]
    for c in ([collector] if isinstance(collector, CollectorProcess) else []) + own:
        lines = c.log_path.read_text(errors="replace").splitlines()[-COLLECTOR_LOG_LINES:]
        report.sections.append((f"collector log (tail): {c.log_path}", "\n".join(lines)))
        if c.proc.poll() is None:
            report.sections.append(("collector telemetry", repr(c.telemetry())))
    return report


@pytest.fixture(scope="session", autouse=True)
def _privileged() -> None:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root: run `sudo make test`", pytrace=False)


@pytest.fixture(scope="session")
def grpc_sink() -> Iterator[GrpcSink]:
    sink = GrpcSink()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    server = Jaeger(tmp_path_factory.mktemp("jaeger"))
    yield server
    server.stop()


SESSION_COLLECTOR: list[CollectorProcess] = []  # the `collector` fixture's, once started


@pytest.fixture(scope="module", autouse=True)
def _session_collector_caught_up() -> Iterator[None]:
    """A module ends when the session collector has worked through its traffic. It
    traces every test's, and keeps no budget: a saturating burst (the span budget's
    pgbench) leaves it a ring buffer to read and spans to export for a minute, and
    the next module's few spans would meet full export queues and be dropped there
    (counted, never at the sinks the tests read)."""
    yield
    if SESSION_COLLECTOR:
        SESSION_COLLECTOR[0].wait_caught_up()


@pytest.fixture(scope="session")
def collector(
    tmp_path_factory: pytest.TempPathFactory,
    grpc_sink: GrpcSink,
    http_sink: HttpSink,
    jaeger: Jaeger,
) -> Iterator[CollectorProcess]:
    """The collector under test, exporting every span over OTLP/gRPC and OTLP/HTTP
    to the test's receivers, and to a real Jaeger."""
    tmp = tmp_path_factory.mktemp("collector")
    proc = CollectorProcess(
        tmp,
        {
            "otlp": {"endpoint": f"127.0.0.1:{grpc_sink.port}", "insecure": True},
            "otlphttp": {"endpoint": f"http://127.0.0.1:{http_sink.port}/v1/traces"},
            "otlp/jaeger": {"endpoint": f"127.0.0.1:{jaeger.otlp}", "insecure": True},
        },
        otlp_in=True,
        metrics=["otlp"],  # metrics to the gRPC sink, every second
        # Tests check that nothing is lost, not how much the default ring buffer
        # (8 MiB) holds: bursts such as redis-benchmark's 50 clients outrun this
        # collector's three exporters for a moment (capacity is bench/'s to measure).
        extra_env={"OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_EBPF_RING_BUFFER_PAGES": "8192"},
    )
    SESSION_COLLECTOR.append(proc)
    yield proc
    SESSION_COLLECTOR.clear()
    code = proc.stop()
    assert code == 0, f"collector exited {code}:\n{proc.log_path.read_text()}"


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    server = Nginx(Path(tmp_path_factory.mktemp("nginx")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def py_server() -> Iterator[PythonServer]:
    server = PythonServer("py-backend")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PythonServer]:
    """The Python test server over HTTPS, on the system libssl."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    server = PythonServer("py-tls", args=("127.0.0.1", str(cert), str(key)))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chain() -> Iterator[tuple[PythonServer, PythonServer]]:
    """svc-b (a middle tier) calling svc-c, both uninstrumented."""
    leaf = PythonServer("svc-c")
    middle = PythonServer("svc-b", script="py_proxy_server.py", args=(str(leaf.port),))
    yield middle, leaf
    middle.stop()
    leaf.stop()


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_until(lambda: listening(port), 10, "redis listening")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    server = MariaDB(tmp_path_factory.mktemp("mariadb"))
    yield server
    server.stop()
