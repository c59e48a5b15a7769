"""The collector's own counters: nothing is lost silently.

Plain integers updated from the single processing thread; read by the health
endpoint and the periodic log line (a torn read there is harmless).
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(slots=True)
class SelfTelemetry:
    events_received: int = 0
    events_lost: int = 0  # kernel ring buffer full
    events_retried: int = 0  # written to the spare ring buffer (the main one refused them)
    requests_not_counted: int = 0  # requests the kernel's RED map had no room for
    statements_unnamed: int = 0  # PostgreSQL statements counted whose text was gone (pg_names)
    requests_shed: int = 0  # HTTP/1 requests given no span by the span budget (still counted)
    requests_shed_uncounted: int = 0  # pipelined behind a shed one: neither counted nor traced
    requests_shed_backlog: int = 0  # given no span while the ring buffer was read down
    span_budget_one_in: int = 1  # HTTP/1 requests get a span 1 in this many now (a gauge)
    # The collector's CPU over the budget's last second, and what the budget allowed
    # (thousandths of a core, gauges; allowed 0: no adaptive budget)
    collector_cpu_millicores: int = 0
    span_budget_allowed_millicores: int = 0
    connections_tracked: int = 0
    connections_evicted: int = 0  # table full: oldest dropped
    connections_excluded: int = 0  # not selected, or the collector's own traffic
    connections_unrecognised: int = 0  # no supported protocol from the first byte: ignored
    parse_errors: int = 0  # bytes that are not their protocol, and faults on the event path
    events_late: int = 0  # calls reported after their bytes were skipped as a gap
    connections_declined: int = 0  # parsing stopped: a fault, or a peer beyond our bounds
    requests_unanswered: int = 0  # connection closed before a response
    requests_dropped: int = 0  # more in flight on one connection than its parser keeps
    requests_pending_at_exit: int = 0  # still awaiting a response when we stopped
    spans_built: int = 0
    spans_outliers: int = 0  # of those, requests the budget shed kept for failing or being slow
    spans_received_otlp: int = 0  # from apps' SDKs, forwarded
    otlp_requests_refused: int = 0  # not OTLP, malformed or too large: a 4xx / INVALID_ARGUMENT
    otlp_requests_busy: int = 0  # answered "retry later": too many spans waiting, or memory
    otlp_requests_over_memory: int = 0  # of those, over the memory limiter's soft limit
    memory_resident_mib: int = 0  # the collector's resident memory (a gauge)
    memory_soft_limit_mib: int = 0  # the memory limiter's (0: none); apps' spans refused above
    memory_limit_mib: int = 0
    spans_merged_away: int = 0  # eBPF duplicates of SDK spans, dropped into them
    spans_exported: int = 0
    spans_export_failed: int = 0
    spans_dropped: int = 0  # export queue full
    spans_queued: int = 0  # waiting in the export queues now (a gauge)
    export_waited_ms: int = 0  # the processing thread held by a full export queue (export_room)
    tls_libraries: int = 0  # libssl files with the OpenSSL uprobes attached
    tls_not_visible: int = 0  # executables seen doing TLS the probes cannot read
    go_processes: int = 0  # Go processes whose calls name their goroutine (bpf/go.bpf.c)
    asyncio_processes: int = 0  # Python processes whose calls name their task (asyncio.bpf.c)
    node_processes: int = 0  # Node processes whose calls name their callback (node.bpf.c)
    profile_samples: int = 0  # CPU samples counted by the profiler
    profile_samples_lost: int = 0  # not counted: the kernel's map had no room
    profile_stacks_lost: int = 0  # counted, but the stack map had no room for the stack
    profiles_exported: int = 0  # profile windows delivered, per exporter
    profiles_export_failed: int = 0

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def fault_summary(exc: BaseException) -> str:
    """An exception as the type and the line that raised it: its message may quote
    the bytes that caused it, which are someone else's (and may be a secret)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return type(exc).__name__ + where
