"""`otel-ebpf top` on a real node: a slow service and a failing one, as the live
view shows them in a real terminal (tmux, 80x24), and as `--once` and `--json`
print them. Also with no collector running: top starts its own probes."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from harness import OTEL_EBPF, CollectorProcess, PythonServer, free_port, get_many, wait_until

SESSION = "otel-ebpf-top-test"


@pytest.fixture
def services() -> Iterator[tuple[PythonServer, PythonServer]]:
    slow, failing = PythonServer("slow-svc"), PythonServer("failing-svc")
    yield slow, failing
    slow.stop()
    failing.stop()


def drive(slow: PythonServer, failing: PythonServer) -> None:
    get_many(slow.port, "/sleep/300", 2)
    get_many(failing.port, "/status/500", 5)


def top(*args: str) -> str:
    out = subprocess.run(
        [OTEL_EBPF, "top", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def snapshot(endpoint: str) -> dict[str, Any]:
    """What `top --once --json` prints, at once (the test waits for what it needs)."""
    return dict(json.loads(top("--once", "--json", "--endpoint", endpoint, "--wait", "0")))


def service_row(snap: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in snap["services"] if r["service"] == name), None)


def columns(text: str, name: str) -> list[str]:
    """The first row naming `name` in its first cell, split into cells."""
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [name])


def test_top_once_and_json_read_the_running_collector(
    collector: CollectorProcess, services: tuple[PythonServer, PythonServer]
) -> None:
    endpoint = f"127.0.0.1:{collector.health_port}"
    snapshot(endpoint)  # someone looks: the collector starts keeping the view
    drive(*services)

    def both_seen() -> bool:
        snap = snapshot(endpoint)
        slow, failing = service_row(snap, "slow-svc"), service_row(snap, "failing-svc")
        return bool(slow and failing and slow["requests"] >= 2 and failing["requests"] >= 5)

    wait_until(both_seen, 8, "both services in top --json")
    snap = snapshot(endpoint)
    slow, failing = service_row(snap, "slow-svc"), service_row(snap, "failing-svc")
    assert slow and failing
    assert slow["p50_ms"] >= 300 and slow["error_rate"] == 0
    assert failing["error_rate"] == 1.0
    slowest = next(r for r in snap["slowest"] if r["service"] == "slow-svc")
    assert slowest["verdict"] == "server" and slowest["wait_ms"] >= 290

    text = top("--once", "--endpoint", endpoint, "--wait", "0")
    _, _rate, errors, p50, _p99, _app = columns(text, "slow-svc")
    assert float(p50) >= 300 and float(errors) == 0
    assert float(columns(text, "failing-svc")[2]) == 100.0
    assert f"collector at {endpoint}" in text
    assert "\x1b[" not in text  # plain text: stdout is not a terminal


def test_top_in_an_80_by_24_terminal(
    collector: CollectorProcess, services: tuple[PythonServer, PythonServer]
) -> None:
    endpoint = f"127.0.0.1:{collector.health_port}"
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            drive(*services)

    driver = threading.Thread(target=traffic, daemon=True)
    driver.start()
    tmux = ["tmux", "-L", SESSION]  # its own server: nothing of the user's is touched
    subprocess.run([*tmux, "kill-server"], capture_output=True)
    command = f"{OTEL_EBPF} top --endpoint {endpoint}"
    size = ["-x", "80", "-y", "24"]
    subprocess.run([*tmux, "new-session", "-d", "-s", SESSION, *size, command], check=True)

    def screen() -> str:
        out = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", SESSION], capture_output=True, text=True
        )
        return out.stdout

    def keys(*sent: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", SESSION, *sent], check=True)

    try:
        wait_until(lambda: "slow-svc" in screen() and "failing-svc" in screen(), 20, "rows")
        wait_until(lambda: "server" in screen().split("slowest")[-1], 10, "a verdict")
        shown = screen()
        lines = shown.rstrip("\n").splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), shown
        assert float(columns(shown, "slow-svc")[3]) >= 300, shown  # P50ms
        assert float(columns(shown, "failing-svc")[2]) == 100.0, shown  # ERR%
        assert "sort rate" in shown

        keys("s")
        wait_until(lambda: "sort errors" in screen(), 5, "sorted by errors")
        services_table = screen().split("edges:")[0]
        assert services_table.index("failing-svc") < services_table.index("slow-svc")

        keys("/", "failing", "Enter")
        wait_until(lambda: "filter 'failing'" in screen(), 5, "the filter applied")
        wait_until(lambda: "slow-svc" not in screen(), 5, "slow-svc filtered out")
        assert "failing-svc" in screen()

        keys("q")
        wait_until(
            lambda: subprocess.run([*tmux, "has-session", "-t", SESSION]).returncode != 0,
            5,
            "top quit",
        )
    finally:
        stop.set()
        driver.join(10)
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_top_with_no_collector_starts_its_own_probes(
    services: tuple[PythonServer, PythonServer],
) -> None:
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            drive(*services)

    driver = threading.Thread(target=traffic, daemon=True)
    driver.start()
    try:
        nobody = f"127.0.0.1:{free_port()}"
        text = top("--once", "--endpoint", nobody, "--wait", "4")
    finally:
        stop.set()
        driver.join(10)
    assert "own probes (no collector answered)" in text
    assert float(columns(text, "failing-svc")[2]) == 100.0, text
