"""The span export queue: spans wait here for their exporter's thread, which
sends them in batches.

It behaves as the SDK's BatchSpanProcessor does, with the same settings
(config.span_batching): a batch leaves once `max_export_batch_size` spans wait,
and at least one every schedule delay; at shutdown, everything that waits. It is
ours because the SDK's costs an interpreted call chain and a getpid() syscall
per span on the processing thread, and because the pipeline had to reach into
its private members for what it needs: the queue's length (export_room) and a
shutdown bounded in time.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from otel_ebpf.config import BatchSettings
from otel_ebpf.model import FinishedSpan

log = logging.getLogger(__name__)


class BatchExporter(Protocol):
    def export(self, spans: Sequence[FinishedSpan]) -> object: ...
    def shutdown(self) -> None: ...


class SpanBatcher:
    """One exporter's queue and the thread that empties it. `add` never waits
    and never drops: the caller asks export_room first whether a span fits."""

    def __init__(self, exporter: BatchExporter, settings: BatchSettings) -> None:
        self.queue: deque[FinishedSpan] = deque(maxlen=settings.max_queue_size)
        self._exporter = exporter
        self._batch_size = settings.max_export_batch_size
        self._delay_s = settings.schedule_delay_s
        self._wake = threading.Event()
        self._woken = False  # set asked for and not yet seen by the thread (no call per span)
        self._stopping = False
        self._given_up = False  # shutdown's time ran out: no further batch is taken
        self._exporting = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._worker.start()

    def add(self, span: FinishedSpan) -> None:
        queue = self.queue
        queue.append(span)
        if len(queue) >= self._batch_size and not self._woken:
            self._woken = True
            self._wake.set()

    def force_flush(self) -> None:
        """Export everything that waits now, on the calling thread."""
        self._export(everything=True)

    def shutdown(self, timeout_s: float) -> None:
        """Export what waits, within `timeout_s`; then the exporter's shutdown.
        Past the time, what still waits stays in `queue` (the caller counts it)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._worker.join(timeout_s)
        self._given_up = True
        self._exporter.shutdown()

    def _run(self) -> None:
        while not self._stopping:
            woken = self._wake.wait(self._delay_s)
            self._wake.clear()
            self._woken = False
            if self._stopping:
                break
            self._export(at_least_one=not woken)
        self._export(everything=True)

    def _export(self, at_least_one: bool = False, everything: bool = False) -> None:
        """Full batches; with `at_least_one` (the delay passed) a smaller one too;
        with `everything`, all that waits."""
        queue = self.queue
        with self._exporting:
            while queue and not self._given_up:
                if not (everything or at_least_one or len(queue) >= self._batch_size):
                    return
                at_least_one = False
                batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
                try:
                    self._exporter.export(batch)
                except Exception:  # an exporter's bug must not end the export thread
                    log.exception("exporting %d spans failed", len(batch))
