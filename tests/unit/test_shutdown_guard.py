"""The shutdown guard, in real processes and real signals: a shutdown that hangs
ends the process with the step it hung in and every thread's stack; a second
signal ends it at once; a shutdown that ends in time is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A stand-in for the collector: its stop() only says so; `stuck_at` names the step.
CHILD = textwrap.dedent(
    """
    import logging, sys, threading, time
    from otel_ebpf.shutdown import ShutdownGuard

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    stopped = threading.Event()
    ShutdownGuard(stopped.set, lambda: "a step that never ends", limit_s=float(sys.argv[1])).install()
    print("ready", flush=True)
    stopped.wait()

    def a_step_that_never_ends():
        print("stopping", flush=True)
        time.sleep(float(sys.argv[2]))

    a_step_that_never_ends()
    """
)


def _start(limit_s: float, step_s: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(limit_s), str(step_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    return child


def _finish(child: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        pytest.fail(f"the process did not end: {child.communicate()[1]}")
    return child.returncode, err


def test_a_shutdown_that_hangs_ends_the_process_and_says_where() -> None:
    child = _start(limit_s=0.5, step_s=600)
    child.send_signal(signal.SIGTERM)
    code, err = _finish(child)
    assert code == 1, err
    assert "SIGTERM: flushing and detaching" in err
    assert "shutdown did not finish within 0.5 s, stuck in a step that never ends" in err
    assert "a_step_that_never_ends" in err  # the main thread's stack, from faulthandler
    assert "Current thread" in err  # the guard's own


def test_a_second_signal_ends_the_process_at_once() -> None:
    child = _start(limit_s=600, step_s=600)
    child.send_signal(signal.SIGINT)
    assert child.stdout is not None
    assert child.stdout.readline() == "stopping\n"  # the first was taken: the shutdown is stuck
    child.send_signal(signal.SIGTERM)
    code, err = _finish(child)
    assert code == 128 + signal.SIGTERM, err
    assert "second SIGTERM: leaving now, during a step that never ends" in err
    assert "a_step_that_never_ends" in err


def test_a_shutdown_that_ends_in_time_exits_as_it_would() -> None:
    child = _start(limit_s=600, step_s=0)
    child.send_signal(signal.SIGTERM)
    code, err = _finish(child)
    assert code == 0, err
    assert "every thread's stack" not in err
