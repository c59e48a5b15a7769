"""Apps' spans wait for the processing thread in a bounded queue: past the
bound a request is refused with Busy (the sender retries), and room comes back
as the processing thread takes them. Over the memory limiter's soft limit a
request is refused before it is decoded."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from test_otlp_receiver import EXPORT, sdk_spans

from otel_ebpf.config import load
from otel_ebpf.memory_limit import MIB
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


def test_over_the_memory_limit_apps_requests_are_refused_and_counted(tmp_path: Path) -> None:
    """A real Collector whose memory limiter's limit (1 MiB) is below any Python
    process: a request is answered 'retry later' and counted as over memory."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "receivers: {ebpf: {}, otlp: {protocols: {grpc: {endpoint: '127.0.0.1:0'}}}}\n"
        "processors: {memory_limiter: {limit_mib: 1}}\n"
        "exporters: {debug: {}}\n"
        "service: {pipelines: {traces: "
        "{receivers: [ebpf, otlp], processors: [memory_limiter], exporters: [debug]}}}\n"
    )
    collector = Collector(load(path, env={}))
    assert collector.otlp is not None and collector.memory is not None
    collector.otlp.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{collector.otlp.grpc_port}")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(EXPORT)(encode_spans(sdk_spans()).SerializeToString(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "above its soft limit (0 MiB)" in (refused.value.details() or "")
    finally:
        channel.close()
        collector.otlp.stop()
    collector._watch_memory()
    collector._count_otlp_refusals()
    t = collector.telemetry
    assert (t.otlp_requests_busy, t.otlp_requests_over_memory, t.otlp_requests_refused) == (1, 1, 0)
    assert t.memory_resident_mib == collector.memory.resident // MIB > 1
    collector._drain_otlp()
    assert t.spans_received_otlp == 0
