"""The process's exit, bounded and explained.

A collector that does not leave within its grace period is killed by its
supervisor (Kubernetes, systemd: SIGKILL after 30 s) without a word. Every step
of the shutdown is bounded on its own; this is the guard behind them: past
SHUTDOWN_LIMIT_S it logs the step it was at and every thread's stack, then
leaves. A second SIGINT or SIGTERM leaves at once, the same way, as people
expect of a second Ctrl-C.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Final, NoReturn, TextIO

log = logging.getLogger("otel_ebpf")

# Below the 30 s grace of the shipped DaemonSet, chart and systemd unit; a normal
# shutdown takes 2-4 s, the final flush being bounded at 3 s.
SHUTDOWN_LIMIT_S: Final = 20.0
STUCK_EXIT_CODE: Final = 1


class ShutdownGuard:
    """Started by the first stop signal; it ends the process if the shutdown has
    not ended it within `limit_s`. It is never disarmed: the interpreter's own
    exit (joining threads, freeing bcc) is under it too."""

    def __init__(
        self,
        stop: Callable[[], None],
        stuck_at: Callable[[], str],
        limit_s: float = SHUTDOWN_LIMIT_S,
        stream: TextIO = sys.stderr,
    ) -> None:
        self._stop, self._stuck_at = stop, stuck_at
        self._limit_s, self._stream = limit_s, stream
        self._started = False

    def install(self) -> None:
        """On the main thread: SIGINT and SIGTERM stop the collector through it."""
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

    def on_signal(self, signum: int, _frame: object = None) -> None:
        name = signal.Signals(signum).name
        if self._started:
            self._leave(f"second {name}: leaving now, during {self._stuck_at()}", 128 + signum)
        self._started = True
        log.info("%s: flushing and detaching", name)
        threading.Thread(target=self._watch, name="shutdown-guard", daemon=True).start()
        self._stop()

    def _watch(self) -> None:
        threading.Event().wait(self._limit_s)
        self._leave(
            f"shutdown did not finish within {self._limit_s:g} s, stuck in "
            f"{self._stuck_at()}: leaving",
            STUCK_EXIT_CODE,
        )

    def _leave(self, message: str, code: int) -> NoReturn:
        log.error("%s; every thread's stack follows", message)
        faulthandler.dump_traceback(file=self._stream, all_threads=True)
        self._stream.flush()
        os._exit(code)  # not sys.exit: the stuck thread may be the one that would run it
