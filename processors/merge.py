"""One tree per request when an app's SDK and the network both describe it.

Decided per request, never per service:

- An eBPF CLIENT span whose request carried a trace context the sending
  process created (not one it merely forwarded), from a process whose SDK
  exports through this collector, describes the same call as that SDK's
  CLIENT span: by default it is dropped and what only the network saw (peer,
  sizes) is added to the SDK span when it arrives. From other processes it is
  kept, as a child of the span named on the wire.
- An eBPF SERVER span in a process that exports SDK spans, for a request
  without trace context, may describe the same request as the SDK SERVER
  span. Its whole trace (it and every eBPF span under it) is held for `hold_s`.
  When an SDK SERVER span of the same process, method and time arrives, the
  eBPF one is dropped, its network facts go onto the SDK span, and the held
  spans join the SDK trace under the innermost SDK span that contains them.
  If none arrives in time, the held spans leave as they were.

`keep_duplicates` keeps eBPF duplicates instead, as children of the SDK span.
Runs on the pipeline's single processing thread.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind

from otel_ebpf.model import FinishedSpan
from otel_ebpf.processors.correlate import RequestContext

Export = Callable[[FinishedSpan], None]
log = logging.getLogger(__name__)

# Network facts an SDK span rarely has and the kernel always does.
NETWORK_FACTS: Final = (
    "network.peer.address",
    "network.peer.port",
    "client.address",
    "client.port",
    "network.transport",
    "network.type",
    "http.request.body.size",
    "http.response.body.size",
)
SLACK_NS: Final = 2_000_000  # clocks of app and kernel differ by the call overheads


def with_ids(
    span: FinishedSpan, trace_id: int, parent_id: int | None, extra: dict[str, Any] | None = None
) -> ReadableSpan:
    """A copy of `span` moved into another trace and/or under another parent."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    if parent_id is None:  # same parent, in the new trace
        new_parent = (
            SpanContext(trace_id, parent.span_id, True, parent.trace_flags) if parent else None
        )
    else:
        new_parent = SpanContext(trace_id, parent_id, True, ctx.trace_flags) if parent_id else None
    attributes = dict(span.attributes or {})
    if extra:
        for key, value in extra.items():
            attributes.setdefault(key, value)
    return ReadableSpan(
        name=span.name,
        context=SpanContext(trace_id, ctx.span_id, False, ctx.trace_flags, ctx.trace_state),
        parent=new_parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _facts(span: FinishedSpan) -> dict[str, Any]:
    attrs = span.attributes or {}
    return {k: attrs[k] for k in NETWORK_FACTS if k in attrs}


@dataclass
class _HeldTrace:
    deadline: float
    spans: list[tuple[FinishedSpan, int]] = field(default_factory=list)  # (span, pid)
    root: FinishedSpan | None = None  # the eBPF SERVER span that may be a duplicate
    root_pid: int = 0


@dataclass
class _Resolution:
    trace_id: int
    replaced_span: int
    pid: int
    sdk: list[tuple[int, int, int]]  # (span_id, start, end) of the SDK spans of that process
    deadline: float


class Merger:
    def __init__(self, export: Export, hold_s: float = 10.0, keep_duplicates: bool = False) -> None:
        self._export = export
        self._hold_s = hold_s
        self._keep = keep_duplicates
        self.sdk_pids: set[int] = set()
        self._held: dict[int, _HeldTrace] = {}
        self._resolved: OrderedDict[int, _Resolution] = OrderedDict()
        self._facts: OrderedDict[int, dict[str, Any]] = OrderedDict()  # SDK span id -> facts
        self._recent_sdk: OrderedDict[int, tuple[float, FinishedSpan, int]] = OrderedDict()
        self.duplicates_dropped = 0
        self.traces_merged = 0

    # -- from the network -------------------------------------------------------

    def is_sdk_process(self, pid: int) -> bool:
        return pid in self.sdk_pids

    def ebpf(self, span: FinishedSpan, rc: RequestContext | None, pid: int) -> None:
        ctx = span.get_span_context()
        assert ctx is not None
        if rc is not None and rc.duplicates_sdk and pid in self.sdk_pids:
            # Only for a process whose SDK reports through us: elsewhere nothing
            # says its span will reach any backend, so the network's view stays.
            self._remember_facts(rc.parent_id, _facts(span))
            if not self._keep:
                self.duplicates_dropped += 1
                return
        resolution = self._resolved.get(ctx.trace_id)
        if resolution is not None:
            self._emit_rewritten(span, resolution)
            return
        held = self._held.get(ctx.trace_id)
        if held is None and rc is not None and rc.held:
            held = self._held[ctx.trace_id] = _HeldTrace(time.monotonic() + self._hold_s)
        if held is None:
            self._export(span)
            return
        held.spans.append((span, pid))
        if (
            rc is not None
            and rc.held
            and span.kind == SpanKind.SERVER
            and ctx.span_id == rc.span_id
        ):
            held.root, held.root_pid = span, pid
            match = self._find_recent_sdk(span, pid)
            if match is not None:
                self._resolve(ctx.trace_id, held, match)

    # -- from the apps' SDKs ------------------------------------------------------

    def sdk(self, spans: Sequence[FinishedSpan], pid: int | None) -> None:
        """A batch received over OTLP, from process `pid` when known."""
        if pid is not None and pid not in self.sdk_pids:
            self.sdk_pids.add(pid)
            log.info("process %d exports SDK spans through this collector: merging", pid)
        now = time.monotonic()
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            facts = self._facts.pop(ctx.span_id, None)
            if span.kind == SpanKind.SERVER and pid is not None:
                held_trace = self._match_held(span, pid)
                if held_trace is not None:
                    trace_id, held = held_trace
                    facts = {**_facts(held.root), **(facts or {})} if held.root else facts
                    self._resolve(trace_id, held, (span, pid), batch=spans)
                else:
                    self._recent_sdk[ctx.span_id] = (now, span, pid)
                    while len(self._recent_sdk) > 4096:
                        self._recent_sdk.popitem(last=False)
            self._export(with_ids(span, ctx.trace_id, None, facts) if facts else span)

    # -- time ---------------------------------------------------------------------

    def expire(self, now: float | None = None, everything: bool = False) -> None:
        """Release held traces whose window passed (all of them at shutdown)."""
        now = time.monotonic() if now is None else now
        for trace_id in [t for t, h in self._held.items() if everything or h.deadline <= now]:
            for span, _ in self._held.pop(trace_id).spans:
                self._export(span)
        while self._resolved and next(iter(self._resolved.values())).deadline <= now:
            self._resolved.popitem(last=False)
        while self._recent_sdk and next(iter(self._recent_sdk.values()))[0] + self._hold_s <= now:
            self._recent_sdk.popitem(last=False)

    # -- internals ------------------------------------------------------------------

    def _remember_facts(self, sdk_span_id: int, facts: dict[str, Any]) -> None:
        self._facts[sdk_span_id] = facts
        while len(self._facts) > 65536:
            self._facts.popitem(last=False)

    @staticmethod
    def _same_request(ebpf: FinishedSpan, sdk: FinishedSpan) -> bool:
        """Same method, path and client socket where the SDK says them (stable or
        older semantic conventions), and the SDK span inside the network's view."""
        e, s = ebpf.attributes or {}, sdk.attributes or {}
        method = s.get("http.request.method", s.get("http.method"))
        if method is not None and method != e.get("http.request.method"):
            return False
        port = s.get("client.port", s.get("net.peer.port"))
        if port is not None and "client.port" in e and str(port) != str(e["client.port"]):
            return False
        path = s.get("url.path", str(s.get("http.target", "")).partition("?")[0] or None)
        if path is not None and "url.path" in e and path != e["url.path"]:
            return False
        return (ebpf.start_time or 0) - SLACK_NS <= (sdk.start_time or 0) and (
            (sdk.end_time or 0) <= (ebpf.end_time or 0) + SLACK_NS
        )

    def _match_held(self, sdk: FinishedSpan, pid: int) -> tuple[int, _HeldTrace] | None:
        best: tuple[int, _HeldTrace] | None = None
        best_gap = 0
        for trace_id, held in self._held.items():
            root = held.root
            if root is None or held.root_pid != pid or not self._same_request(root, sdk):
                continue
            gap = abs((sdk.start_time or 0) - (root.start_time or 0))
            if best is None or gap < best_gap:
                best, best_gap = (trace_id, held), gap
        return best

    def _find_recent_sdk(self, root: FinishedSpan, pid: int) -> tuple[FinishedSpan, int] | None:
        for key, (_, sdk, sdk_pid) in self._recent_sdk.items():
            if sdk_pid == pid and self._same_request(root, sdk):
                del self._recent_sdk[key]
                return sdk, pid
        return None

    def _resolve(
        self,
        trace_id: int,
        held: _HeldTrace,
        match: tuple[FinishedSpan, int],
        batch: Sequence[FinishedSpan] | None = None,
    ) -> None:
        sdk, pid = match
        sdk_ctx = sdk.get_span_context()
        assert sdk_ctx is not None and held.root is not None
        root_ctx = held.root.get_span_context()
        assert root_ctx is not None
        # The matched SDK server span first: the parent when nothing tighter contains a span.
        same_process = [(sdk_ctx.span_id, sdk.start_time or 0, sdk.end_time or 0)] + [
            (c.span_id, s.start_time or 0, s.end_time or 0)
            for s in batch or ()
            if (c := s.get_span_context()) is not None
            and c.trace_id == sdk_ctx.trace_id
            and c.span_id != sdk_ctx.span_id
        ]
        resolution = _Resolution(
            sdk_ctx.trace_id, root_ctx.span_id, pid, same_process, time.monotonic() + self._hold_s
        )
        del self._held[trace_id]
        self._resolved[trace_id] = resolution
        self.traces_merged += 1
        for span, _ in held.spans:
            self._emit_rewritten(span, resolution)

    def _emit_rewritten(self, span: FinishedSpan, r: _Resolution) -> None:
        ctx = span.get_span_context()
        assert ctx is not None
        if ctx.span_id == r.replaced_span:
            if self._keep:
                self._export(with_ids(span, r.trace_id, self._innermost(span, r)))
            else:
                self.duplicates_dropped += 1
            return
        parent = span.parent
        if parent is not None and parent.span_id == r.replaced_span:
            self._export(with_ids(span, r.trace_id, self._innermost(span, r)))
        else:
            self._export(with_ids(span, r.trace_id, None))

    @staticmethod
    def _innermost(span: FinishedSpan, r: _Resolution) -> int:
        """The SDK span of the process that most tightly contains `span` in time;
        the SDK server span (first) when no other strictly does."""
        start, end = span.start_time or 0, span.end_time or 0
        best_id, best_start = r.sdk[0][0], -1
        for span_id, s_start, s_end in r.sdk[1:]:
            if s_start <= start and end <= s_end and s_start > best_start:
                best_id, best_start = span_id, s_start
        return best_id
