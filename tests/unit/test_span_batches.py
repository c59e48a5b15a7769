"""The span export queue: batches leave when full, on the schedule delay, and at
shutdown; an exporter that fails or hangs loses nothing else."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, Status

from otel_ebpf.config import BatchSettings
from otel_ebpf.model import BuiltSpan, FinishedSpan, SpanIds
from otel_ebpf.processors.spans import SCOPE
from otel_ebpf.span_batches import SpanBatcher

WAIT_S = 10.0  # only ever reached when the behaviour is broken


def span(n: int) -> BuiltSpan:
    return BuiltSpan(
        f"s{n}",
        SpanIds(1, 2, False),
        None,
        Resource({}),
        {},
        SpanKind.SERVER,
        Status(),
        n,
        n,
        SCOPE,
    )


class Exporter:
    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.exported = threading.Condition()
        self.shut_down = False
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()  # a batch reached the exporter
        self._fail_next = fail_first

    def export(self, spans: Sequence[FinishedSpan]) -> object:
        self.entered.set()
        self.release.wait(WAIT_S)
        with self.exported:
            if self._fail_next:
                self._fail_next = False
                raise RuntimeError("exporter bug")
            self.batches.append([s.name for s in spans])
            self.exported.notify_all()
        return None

    def shutdown(self) -> None:
        self.shut_down = True

    def wait_for(self, spans: int) -> list[list[str]]:
        with self.exported:
            self.exported.wait_for(lambda: sum(map(len, self.batches)) >= spans, WAIT_S)
            return list(self.batches)


def test_a_full_batch_leaves_without_waiting_for_the_delay() -> None:
    exporter = Exporter()
    batcher = SpanBatcher(exporter, BatchSettings(10, 3600.0, 3))
    for n in range(4):
        batcher.add(span(n))
    assert exporter.wait_for(3) == [["s0", "s1", "s2"]]
    assert [s.name for s in batcher.queue] == ["s3"]  # not a full batch: it waits
    batcher.shutdown(WAIT_S)


def test_a_smaller_batch_leaves_after_the_schedule_delay() -> None:
    exporter = Exporter()
    batcher = SpanBatcher(exporter, BatchSettings(10, 0.05, 5))
    batcher.add(span(1))
    batcher.add(span(2))
    assert exporter.wait_for(2) == [["s1", "s2"]]
    batcher.shutdown(WAIT_S)


def test_shutdown_exports_everything_in_order_in_batches_then_shuts_the_exporter() -> None:
    exporter = Exporter()
    exporter.release.clear()  # the first full batch is held while the rest queue up
    batcher = SpanBatcher(exporter, BatchSettings(20, 3600.0, 4))
    for n in range(10):
        batcher.add(span(n))
    exporter.release.set()
    batcher.shutdown(WAIT_S)
    flat = [name for batch in exporter.batches for name in batch]
    assert flat == [f"s{n}" for n in range(10)]
    assert all(len(batch) <= 4 for batch in exporter.batches)
    assert exporter.shut_down and not batcher.queue


def test_an_exporter_that_raises_does_not_end_the_export_thread() -> None:
    exporter = Exporter(fail_first=True)
    batcher = SpanBatcher(exporter, BatchSettings(10, 3600.0, 2))
    for n in range(4):
        batcher.add(span(n))
    assert exporter.wait_for(2) == [["s2", "s3"]]  # the first batch was lost to the bug
    batcher.shutdown(WAIT_S)


def test_shutdown_past_its_time_leaves_what_waits_for_the_caller_to_count() -> None:
    exporter = Exporter()
    exporter.release.clear()  # a backend that does not answer
    batcher = SpanBatcher(exporter, BatchSettings(10, 3600.0, 2))
    for n in range(5):
        batcher.add(span(n))
    assert exporter.entered.wait(WAIT_S)  # the first batch is under way
    batcher.shutdown(0.2)
    assert exporter.shut_down
    waiting = len(batcher.queue)
    exporter.release.set()  # the batch under way ends; no further one is taken
    assert exporter.wait_for(2) == [["s0", "s1"]]
    assert waiting == len(batcher.queue) == 3
