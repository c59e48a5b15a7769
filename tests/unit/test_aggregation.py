"""Our per-request instruments against the SDK's: same points, every reader's
temporality, nothing lost to a collection that overlaps a measurement."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import Counter as SdkCounter
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_ebpf.aggregation import MAX_SERIES, OVERFLOW, Aggregates

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
SCOPE = InstrumentationScope("otel-ebpf", "1", "https://example.com/schema")
DELTA = {
    SdkCounter: AggregationTemporality.DELTA,
    SdkHistogram: AggregationTemporality.DELTA,
}


def setup(*readers: InMemoryMetricReader) -> tuple[Aggregates, MeterProvider]:
    resource = Resource({"service.name": "otel-ebpf"})
    provider = MeterProvider(metric_readers=list(readers), resource=resource)
    aggregates = Aggregates(resource, SCOPE)
    return aggregates, provider


def metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        m.name: m.data
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope == SCOPE
        for m in sm.metrics
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST"]),
            st.sampled_from([*BOUNDS, 0.0, 0.0001, 0.3, 2.0, 7.5]),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_histogram_points_match_the_sdk(values: list[tuple[str, float]]) -> None:
    ours, sdk = InMemoryMetricReader(), InMemoryMetricReader()
    aggregates, _ = setup(ours)
    histogram = aggregates.histogram("d", "s", "durations", BOUNDS)
    aggregates.attach([ours])
    meter = MeterProvider(metric_readers=[sdk]).get_meter("x")
    reference = meter.create_histogram("d", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
    for method, value in values:
        histogram.record(value, (("http.request.method", method),))
        reference.record(value, {"http.request.method": method})

    def by_method(reader: InMemoryMetricReader) -> dict[str, tuple[Any, ...]]:
        data = reader.get_metrics_data()
        assert data is not None
        return {
            p.attributes["http.request.method"]: (
                p.count,
                round(p.sum, 9),
                list(p.bucket_counts),
                tuple(p.explicit_bounds),
                p.min,
                p.max,
            )
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            for p in m.data.data_points
        }

    assert by_method(ours) == by_method(sdk)


def test_each_reader_sees_every_measurement_in_its_own_temporality() -> None:
    cumulative, delta = InMemoryMetricReader(), InMemoryMetricReader(preferred_temporality=DELTA)
    aggregates, _ = setup(cumulative, delta)
    requests = aggregates.counter("requests", "{request}", "requests")
    durations = aggregates.histogram("d", "s", "durations", BOUNDS)
    aggregates.attach([cumulative, delta])
    series = (("service.name", "shop"),)

    for round_ in (1, 2, 3):
        for _ in range(round_ * 10):
            requests.add(1, series)
            durations.record(0.02, series)
        for reader, temporality, expected in (
            (cumulative, AggregationTemporality.CUMULATIVE, sum(range(1, round_ + 1)) * 10),
            (delta, AggregationTemporality.DELTA, 10 * round_),
        ):
            got = metrics(reader)
            (point,) = got["requests"].data_points
            assert point.value == expected
            assert got["requests"].aggregation_temporality == temporality
            assert got["d"].aggregation_temporality == temporality
            assert got["requests"].is_monotonic
            (hist,) = got["d"].data_points
            assert hist.count == expected and hist.attributes == {"service.name": "shop"}

    # Delta: a quiet interval reports nothing; cumulative keeps its start.
    assert "requests" not in metrics(delta)
    starts = {p.start_time_unix_nano for p in metrics(cumulative)["requests"].data_points}
    assert len(starts) == 1


def test_our_points_join_the_sdk_scope_of_the_same_resource() -> None:
    reader = InMemoryMetricReader()
    aggregates, provider = setup(reader)
    counter = aggregates.counter("ours", "1", "ours")
    aggregates.attach([reader])
    provider.get_meter(SCOPE.name, SCOPE.version, SCOPE.schema_url).create_counter("sdk").add(1)
    counter.add(2, (("k", "v"),))
    data = reader.get_metrics_data()
    assert data is not None
    (rm,) = data.resource_metrics
    (sm,) = rm.scope_metrics
    assert sorted(m.name for m in sm.metrics) == ["ours", "sdk"]


def test_series_past_the_limit_are_counted_in_one_overflow_series() -> None:
    reader = InMemoryMetricReader()
    aggregates, _ = setup(reader)
    counter = aggregates.counter("c", "1", "c")
    aggregates.attach([reader])
    for i in range(MAX_SERIES + 50):
        counter.add(1, (("id", i),))
    points = metrics(reader)["c"].data_points
    assert len(points) == MAX_SERIES + 1
    assert sum(p.value for p in points) == MAX_SERIES + 50
    (overflow,) = [p for p in points if p.attributes == dict(OVERFLOW)]
    assert overflow.value == 50


def test_collections_overlapping_measurements_lose_none() -> None:
    reader = InMemoryMetricReader(preferred_temporality=DELTA)
    aggregates, _ = setup(reader)
    counter = aggregates.counter("c", "1", "c")
    aggregates.attach([reader])
    done = threading.Event()
    total = 0

    def collected() -> int:
        got = metrics(reader).get("c")
        return sum(p.value for p in got.data_points) if got else 0

    def collect() -> None:
        nonlocal total
        while not done.is_set():
            total += collected()

    collector = threading.Thread(target=collect)
    collector.start()
    for i in range(50_000):
        counter.add(1, (("k", i % 7),))
    done.set()
    collector.join()
    total += collected()
    assert total == 50_000
