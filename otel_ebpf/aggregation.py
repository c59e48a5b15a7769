"""Per-request measurements, aggregated in plain lists and read once per collection.

The SDK's synchronous instruments cost 10-15 µs a measurement (a Measurement
object, attribute hashing, a storage per view): with six per client span they
were a third of the collector's main thread. These instruments keep one cell
per attribute set and hand each metric reader finished data points when it
collects, in that reader's temporality, beside the SDK's own (observable)
instruments. Attribute sets are tuples of (key, value) pairs built in a fixed
order by their callers, so a cell is one dict lookup away.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import replace
from time import time_ns
from typing import Any, Final

from opentelemetry.sdk.metrics._internal.instrument import _Counter, _Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import (
    Histogram as HistogramData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

Series = tuple[tuple[str, str | int | bool], ...]
# Histogram cell: [count, sum, min, max, bucket 0, ..., bucket n]; counter cell: [value].
Cell = list[float]
_COUNT, _SUM, _MIN, _MAX, _BUCKETS = 0, 1, 2, 3, 4


# Series per instrument, as the metrics SDK specification's default cardinality
# limit: past it, measurements go to one overflow series, counted, not dropped.
MAX_SERIES: Final = 2000
OVERFLOW: Final[Series] = (("otel.metric.overflow", True),)


class _Instrument:
    sdk_class: type = _Counter

    def __init__(self, lock: threading.Lock, name: str, unit: str, description: str) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._lock = lock
        self._cells: dict[Series, Cell] = {}

    def _cell(self, series: Series) -> Cell:
        """The series' cell, made if new (lock held)."""
        cell = self._cells.get(series)
        if cell is None:
            if len(self._cells) >= MAX_SERIES:
                series = OVERFLOW
                cell = self._cells.get(series)
            if cell is None:
                cell = self._cells[series] = self.empty()
        return cell

    def take(self) -> dict[Series, Cell]:
        """What was measured since the last take (lock held)."""
        cells, self._cells = self._cells, {}
        return cells

    def merge(self, into: dict[Series, Cell], cells: dict[Series, Cell]) -> list[Series]:
        """Adds `cells` to `into`; returns the series new to it."""
        new = []
        for series, cell in cells.items():
            mine = into.get(series)
            if mine is None:
                if len(into) >= MAX_SERIES:
                    series = OVERFLOW
                    mine = into.get(series)
                if mine is None:
                    into[series] = list(cell)
                    new.append(series)
                    continue
            self.add_cell(mine, cell)
        return new

    def empty(self) -> Cell:
        raise NotImplementedError

    def add_cell(self, mine: Cell, cell: Cell) -> None:
        raise NotImplementedError

    def point(self, series: Series, cell: Cell, start: int, now: int) -> Any:
        raise NotImplementedError

    def metric(self, points: list[Any], temporality: AggregationTemporality) -> Metric:
        raise NotImplementedError


class Counter(_Instrument):
    """A monotonic sum."""

    def add(self, amount: int, series: Series) -> None:
        with self._lock:
            self.add_held(amount, series)

    def add_held(self, amount: int, series: Series) -> None:
        """`add` with the instruments' lock held by the caller (one acquisition
        for several measurements)."""
        self._cell(series)[0] += amount

    def empty(self) -> Cell:
        return [0]

    def add_cell(self, mine: Cell, cell: Cell) -> None:
        mine[0] += cell[0]

    def point(self, series: Series, cell: Cell, start: int, now: int) -> NumberDataPoint:
        return NumberDataPoint(dict(series), start, now, int(cell[0]))

    def metric(self, points: list[Any], temporality: AggregationTemporality) -> Metric:
        return Metric(self.name, self.description, self.unit, Sum(points, temporality, True))


class Histogram(_Instrument):
    """Explicit-bucket histogram: bucket i counts values in (bounds[i-1], bounds[i]],
    as the SDK's does."""

    sdk_class = _Histogram

    def __init__(
        self,
        lock: threading.Lock,
        name: str,
        unit: str,
        description: str,
        bounds: Sequence[float],
    ) -> None:
        super().__init__(lock, name, unit, description)
        self.bounds = tuple(bounds)

    def record(self, value: float, series: Series, count: int = 1) -> None:
        """`count`: the measurement stands for that many (a sampled request's
        adjusted count)."""
        with self._lock:
            self.record_held(value, series, count)

    def record_held(self, value: float, series: Series, count: int = 1) -> None:
        """`record` with the instruments' lock held by the caller."""
        cell = self._cell(series)
        cell[_COUNT] += count
        cell[_SUM] += value * count
        if value < cell[_MIN]:
            cell[_MIN] = value
        if value > cell[_MAX]:
            cell[_MAX] = value
        cell[_BUCKETS + bisect_left(self.bounds, value)] += count

    def record_counted(
        self,
        series: Series,
        count: int,
        total: float,
        low: float,
        high: float,
        buckets: Sequence[int],
    ) -> None:
        """Measurements aggregated elsewhere (the kernel), same bounds."""
        if len(buckets) != len(self.bounds) + 1:
            raise ValueError(f"{self.name}: {len(buckets)} buckets for {len(self.bounds)} bounds")
        with self._lock:
            self.add_cell(self._cell(series), [count, total, low, high, *buckets])

    def empty(self) -> Cell:
        return [0, 0.0, math.inf, -math.inf] + [0] * (len(self.bounds) + 1)

    def add_cell(self, mine: Cell, cell: Cell) -> None:
        mine[_COUNT] += cell[_COUNT]
        mine[_SUM] += cell[_SUM]
        mine[_MIN] = min(mine[_MIN], cell[_MIN])
        mine[_MAX] = max(mine[_MAX], cell[_MAX])
        for i in range(_BUCKETS, len(mine)):
            mine[i] += cell[i]

    def point(self, series: Series, cell: Cell, start: int, now: int) -> HistogramDataPoint:
        return HistogramDataPoint(
            attributes=dict(series),
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=int(cell[_COUNT]),
            sum=cell[_SUM],
            bucket_counts=[int(n) for n in cell[_BUCKETS:]],
            explicit_bounds=self.bounds,
            min=cell[_MIN],
            max=cell[_MAX],
        )

    def metric(self, points: list[Any], temporality: AggregationTemporality) -> Metric:
        return Metric(self.name, self.description, self.unit, HistogramData(points, temporality))


class _ReaderView:
    """One reader's state: per instrument, totals since start (cumulative) or
    since its last collection (delta)."""

    def __init__(self, reader: MetricReader, started: int) -> None:
        preferred = reader._instrument_class_temporality
        self.temporality: dict[type, AggregationTemporality] = {
            cls: preferred.get(cls, AggregationTemporality.CUMULATIVE)
            for cls in (_Counter, _Histogram)
        }
        self.cells: dict[_Instrument, dict[Series, Cell]] = {}
        self.first_seen: dict[tuple[_Instrument, Series], int] = {}
        self.since = started


class Aggregates:
    """The instruments, and their hand-over to the SDK's metric readers."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self._resource = resource
        self._scope = scope
        self.lock = threading.Lock()  # instruments' cells
        self._collecting = threading.Lock()  # readers' views (a scrape and a push may overlap)
        self._instruments: list[_Instrument] = []
        self._views: list[_ReaderView] = []
        self._started = self._last_take = time_ns()

    def histogram(
        self, name: str, unit: str, description: str, bounds: Sequence[float]
    ) -> Histogram:
        instrument = Histogram(self.lock, name, unit, description, bounds)
        self._instruments.append(instrument)
        return instrument

    def counter(self, name: str, unit: str, description: str) -> Counter:
        instrument = Counter(self.lock, name, unit, description)
        self._instruments.append(instrument)
        return instrument

    def attach(self, readers: Iterable[MetricReader]) -> None:
        """Adds these instruments to what each reader collects. Call after the
        MeterProvider registered the readers: it wraps the collect callback the
        provider gave them (SDK-internal; tests/unit/test_aggregation.py pins it)."""
        for reader in readers:
            view = _ReaderView(reader, self._started)
            self._views.append(view)
            inner = reader._collect
            assert inner is not None, "attach readers after the MeterProvider registered them"

            def collect(
                r: MetricReader,
                timeout_millis: float = 10_000,
                _inner: Any = inner,
                _view: _ReaderView = view,
            ) -> MetricsData | None:
                return self._add_to(_inner(r, timeout_millis=timeout_millis), _view)

            reader._collect = collect  # type: ignore[assignment]

    def _metrics_for(self, view: _ReaderView) -> list[Metric]:
        with self._collecting:
            with self.lock:
                taken = [(i, i.take()) for i in self._instruments]
            # What was taken was measured in (previous take, now].
            since, now = self._last_take, time_ns()
            self._last_take = now
            for other in self._views:
                for instrument, cells in taken:
                    if cells:
                        into = other.cells.setdefault(instrument, {})
                        for series in instrument.merge(into, cells):
                            other.first_seen[instrument, series] = since
            metrics = []
            for instrument in self._instruments:
                cells = view.cells.get(instrument, {})
                if not cells:
                    continue
                temporality = view.temporality[instrument.sdk_class]
                if temporality == AggregationTemporality.DELTA:
                    points = [instrument.point(s, c, view.since, now) for s, c in cells.items()]
                    view.cells[instrument] = {}
                    for series in cells:
                        del view.first_seen[instrument, series]
                else:
                    points = [
                        instrument.point(s, c, view.first_seen[instrument, s], now)
                        for s, c in cells.items()
                    ]
                metrics.append(instrument.metric(points, temporality))
            view.since = now
            return metrics

    def _add_to(self, data: MetricsData | None, view: _ReaderView) -> MetricsData | None:
        metrics = self._metrics_for(view)
        if not metrics:
            return data
        resource_metrics = list(data.resource_metrics) if data else []
        for i, rm in enumerate(resource_metrics):
            if rm.resource != self._resource:
                continue
            scopes = list(rm.scope_metrics)
            for j, sm in enumerate(scopes):
                if sm.scope == self._scope:
                    scopes[j] = replace(sm, metrics=[*sm.metrics, *metrics])
                    break
            else:
                scopes.append(ScopeMetrics(self._scope, metrics, self._scope.schema_url or ""))
            resource_metrics[i] = replace(rm, scope_metrics=scopes)
            break
        else:
            scope = ScopeMetrics(self._scope, metrics, self._scope.schema_url or "")
            resource_metrics.append(
                ResourceMetrics(self._resource, [scope], self._resource.schema_url)
            )
        return MetricsData(resource_metrics)
