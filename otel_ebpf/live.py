"""The node's last seconds, for `otel-ebpf top`: per service, per edge, and the
slowest requests, from the spans the collector builds.

Kept in per-second cells for the last WINDOW_S seconds, so a reader gets rates
and quantiles of "now" without keeping history; fed on the processing thread,
read by the health endpoint's (GET /live). A span kept by the span budget
stands for `weight` requests: rates and error rates are weighted, quantiles
come from the spans themselves (errors and slow requests are always among them).

Only while someone looks: the first read starts it, and it stops
KEEP_WATCHING_S after the last, so a collector nobody watches pays one time
check per span (feeding it costs about 2.5 us a span).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from opentelemetry.trace import SpanKind, StatusCode

from otel_ebpf.model import BuiltSpan
from otel_ebpf.processors.routes import RouteTemplates

WINDOW_S: Final = 10  # rates and quantiles over the last 10 s
SLOWEST_S: Final = 60  # the slowest requests of the last minute
SLOWEST_N: Final = 10
MAX_KEYS: Final = 500  # services and edges per second; the rest are not shown
MAX_SAMPLES: Final = 100  # durations kept per key and second, for quantiles
KEEP_WATCHING_S: Final = 600.0

# A cell: [requests, errors, server s, network s, retransmits, resets, failed
# connects, durations (list)]; requests and errors weighted.
_REQ, _ERR, _SRV, _NET, _RETR, _RST, _FAIL, _DUR = range(8)
Key = tuple[str, str, str]  # ("service", name, "") or ("edge", client, server)


def _empty() -> list[Any]:
    return [0.0, 0.0, 0.0, 0.0, 0, 0, 0, []]


class LiveView:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seconds: deque[tuple[int, dict[Key, list[Any]]]] = deque()
        self._slowest: list[tuple[float, int, dict[str, Any]]] = []  # min-heap by duration
        self._sequence = 0
        self._watched_since = 0.0
        self._watched_until = 0.0

    def watched(self) -> bool:
        return self._clock() < self._watched_until

    def _cell(self, key: Key) -> list[Any] | None:
        """This second's cell for `key` (lock held); None past MAX_KEYS."""
        now = int(self._clock())
        if not self._seconds or self._seconds[-1][0] != now:
            self._seconds.append((now, {}))
            while self._seconds[0][0] <= now - WINDOW_S:
                self._seconds.popleft()
        cells = self._seconds[-1][1]
        cell = cells.get(key)
        if cell is None:
            if len(cells) >= MAX_KEYS:
                return None
            cell = cells[key] = _empty()
        return cell

    def span(self, span: BuiltSpan, service: str, peer: str | None, weight: int = 1) -> None:
        """A finished eBPF span of `service`; `peer`: who is at the other end (a
        client span's server), None for a server span or when unknown. Weight 0:
        a request already counted (the budget's outliers): only among the slowest."""
        server = span.kind == SpanKind.SERVER
        if (not server and peer is None) or not self.watched():
            return
        attrs = span.attributes or {}
        seconds = max((span.end_time or 0) - (span.start_time or 0), 0) / 1e9
        failed = span.status.status_code == StatusCode.ERROR
        key: Key = ("service", service, "") if server else ("edge", service, peer or "")
        with self._lock:
            cell = self._cell(key) if weight else None  # weight 0: counted elsewhere
            if cell is not None:
                cell[_REQ] += weight
                cell[_ERR] += weight if failed else 0
                cell[_SRV] += float(attrs.get("otel_ebpf.time.server", 0.0)) * weight
                cell[_NET] += float(attrs.get("otel_ebpf.time.network", 0.0)) * weight
                cell[_RETR] += int(attrs.get("otel_ebpf.tcp.retransmits", 0))
                cell[_RST] += 1 if attrs.get("otel_ebpf.tcp.reset") else 0
                if len(cell[_DUR]) < MAX_SAMPLES:
                    cell[_DUR].append(seconds)
            self._remember_slow(span, service, peer, seconds, failed)

    def connect_failed(self, client: str, server: str) -> None:
        """A connect from `client` to `server` that was refused, timed out or
        found no route: no request, so no span says it."""
        if not self.watched():
            return
        with self._lock:
            cell = self._cell(("edge", client, server))
            if cell is not None:
                cell[_FAIL] += 1

    def _remember_slow(
        self, span: Any, service: str, peer: str | None, seconds: float, failed: bool
    ) -> None:
        slowest = self._slowest
        if len(slowest) >= SLOWEST_N and seconds <= slowest[0][0]:
            return
        attrs = span.attributes or {}
        record = {
            "at": (span.end_time or 0) / 1e9,
            "service": service,
            "kind": "server" if span.kind == SpanKind.SERVER else "client",
            "name": _request(span.name, attrs),
            "peer": peer or "",
            "duration_ms": seconds * 1e3,
            "failed": failed,
            "verdict": str(attrs.get("otel_ebpf.verdict", "")),
        }
        for phase in ("request", "wait", "response"):
            value = attrs.get(f"otel_ebpf.phase.{phase}")
            record[f"{phase}_ms"] = float(value) * 1e3 if value is not None else None
        self._sequence += 1
        entry = (seconds, self._sequence, record)
        if len(slowest) < SLOWEST_N:
            heapq.heappush(slowest, entry)
        else:
            heapq.heapreplace(slowest, entry)

    def snapshot(self) -> dict[str, Any]:
        """The last WINDOW_S seconds (fewer when it has been watched for less), as
        `otel-ebpf top` shows them; starts watching."""
        now = self._clock()
        with self._lock:
            if now >= self._watched_until:  # what it kept is stale: start anew
                self._seconds.clear()
                self._slowest.clear()
                self._watched_since = now
            self._watched_until = now + KEEP_WATCHING_S
            seconds = [cells for second, cells in self._seconds if second > now - WINDOW_S]
            self._slowest = [e for e in self._slowest if e[2]["at"] > now - SLOWEST_S]
            heapq.heapify(self._slowest)
            slowest = [dict(e[2]) for e in sorted(self._slowest, reverse=True)]
            totals: dict[Key, list[Any]] = {}
            for cells in seconds:
                for key, cell in cells.items():
                    total = totals.setdefault(key, _empty())
                    for i in range(_DUR):
                        total[i] += cell[i]
                    total[_DUR].extend(cell[_DUR])
        watched_s = now - self._watched_since
        covered = min(float(WINDOW_S), max(watched_s, 1.0))
        services, edges = [], []
        for (kind, a, b), cell in totals.items():
            row = _row(cell, covered)
            if kind == "service":
                services.append({"service": a, **row})
            else:
                edges.append({"client": a, "server": b, **row})
        for record in slowest:
            record["ago_s"] = round(now - record.pop("at"), 1)
        return {
            "window_s": WINDOW_S,
            "watched_s": round(watched_s, 1),
            "services": services,
            "edges": edges,
            "slowest": slowest,
        }


def _row(cell: list[Any], seconds: float) -> dict[str, Any]:
    requests, durations = cell[_REQ], sorted(cell[_DUR])
    timed = cell[_SRV] + cell[_NET]
    return {
        "requests": round(requests),
        "rate": requests / seconds,
        "error_rate": cell[_ERR] / requests if requests else 0.0,
        "p50_ms": _quantile(durations, 0.5) * 1e3,
        "p99_ms": _quantile(durations, 0.99) * 1e3,
        "app_share": cell[_SRV] / timed if timed else None,
        "retransmits": cell[_RETR],
        "resets": cell[_RST],
        "failed_connects": cell[_FAIL],
    }


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_PATHS: Final = RouteTemplates()  # ids and tokens in paths become {id}, as in metrics


def _request(name: str, attrs: Any) -> str:
    """What was asked: the span's name, with its path templated where it has none."""
    path = attrs.get("url.path")
    target = attrs.get("http.route") or (_PATHS.template(str(path)) if path else None)
    if target and str(target) not in name:
        return f"{name} {target}"[:80]
    return name[:80]
