"""Apps' spans wait for the processing thread in a bounded queue: past the
bound a request is refused with Busy (the sender retries), and room comes back
as the processing thread takes them."""

from __future__ import annotations

import pytest
from test_otlp_receiver import sdk_spans

from otel_ebpf.pipeline import OTLP_WAITING_LIMIT, Collector
from otel_ebpf.receivers.otlp import Busy


def test_apps_spans_past_the_bound_are_refused_until_the_pipeline_takes_them(
    collector: Collector,
) -> None:
    batch = list(sdk_spans()) * 256  # 512 spans, the SDK's default batch
    for _ in range(OTLP_WAITING_LIMIT // len(batch)):
        collector._on_otlp_spans(batch, None)
    with pytest.raises(Busy, match=f"{OTLP_WAITING_LIMIT} spans wait to be processed"):
        collector._on_otlp_spans(batch, None)
    collector._drain_otlp()
    assert collector.telemetry.spans_received_otlp == OTLP_WAITING_LIMIT  # the refused: not
    collector._on_otlp_spans(batch, None)  # room again
    collector._drain_otlp()
    assert collector.telemetry.spans_received_otlp == OTLP_WAITING_LIMIT + len(batch)


def test_one_request_larger_than_the_bound_is_taken_when_nothing_waits(
    collector: Collector,
) -> None:
    huge = list(sdk_spans()) * OTLP_WAITING_LIMIT
    collector._on_otlp_spans(huge, None)
    with pytest.raises(Busy):
        collector._on_otlp_spans(huge[:1], None)
    collector._drain_otlp()
    assert collector.telemetry.spans_received_otlp == len(huge)
