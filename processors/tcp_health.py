"""TCP health per (service, peer address, server port, direction), top-N by volume.

The kernel counts per connection (bytes, retransmits, resets); this table turns
those counters into per-peer totals from two sources: a periodic read of the
kernel's connection map (so long-lived connections report while they live) and
the close event (the final counters, the failure reason, the lifetime). Each
connection's last reported counters are remembered, so only the difference is
added and nothing is counted twice.

Cardinality: at most `top_n` peer series per collector, chosen by recent volume
(bytes plus a segment's worth per connection event, decayed every re-rank);
everything else is added to its service's overflow series (peer `_other`).
Each re-rank keeps a tenth of the places free, so a peer that appears between
re-ranks has its own series from its first bytes (unless many appear at once).
Every series is monotonic: a peer demoted from the top N hands its totals to
the overflow series and starts again from zero if it returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.metrics import Observation

from otel_ebpf.aggregation import Series
from otel_ebpf.metrics import Attributes, CollectorMetrics
from otel_ebpf.model import ConnClose, ConnCounters, Endpoint, Role

TOP_N = 500  # peer series before the overflow series
OVERFLOW_PEER = "_other"
RERANK_INTERVAL_NS = 10_000_000_000
EVENT_WEIGHT = 1460  # volume of one connection event (open, failure, reset, retransmit)
KEPT_BONUS = 2.0  # a series keeps its place unless a newcomer has twice its volume

# service, peer address, server port (0: overflow), direction ("active", "passive")
PeerKey = tuple[str, str, int, str]


@dataclass(slots=True)
class TcpTotals:
    opened: int = 0
    refused: int = 0
    timeout: int = 0
    unreachable: int = 0
    reset: int = 0  # established, then reset by the peer
    retransmits: int = 0
    resets_in: int = 0
    resets_out: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0

    def add(self, other: TcpTotals) -> None:
        # spelled out: a getattr/setattr loop over the fields was most of a close
        self.opened += other.opened
        self.refused += other.refused
        self.timeout += other.timeout
        self.unreachable += other.unreachable
        self.reset += other.reset
        self.retransmits += other.retransmits
        self.resets_in += other.resets_in
        self.resets_out += other.resets_out
        self.bytes_tx += other.bytes_tx
        self.bytes_rx += other.bytes_rx

    def volume(self) -> float:
        events = self.opened + self.refused + self.timeout + self.unreachable + self.reset
        events += self.retransmits + self.resets_in + self.resets_out
        return self.bytes_tx + self.bytes_rx + EVENT_WEIGHT * events


class _Counters(Protocol):
    """The kernel's counters of one connection, live (ConnCounters) or final (ConnClose)."""

    @property
    def bytes_egress(self) -> int: ...
    @property
    def bytes_ingress(self) -> int: ...
    @property
    def retransmits(self) -> int: ...
    @property
    def resets_in(self) -> int: ...
    @property
    def resets_out(self) -> int: ...


# what a connection not seen before had reported: nothing
_NONE = ConnCounters(0, 0, 0, Role.UNKNOWN, 0, 0, 0, 0, 0)

# metric name -> (totals field, extra attributes) for each of its series
_SERIES: dict[str, tuple[tuple[str, Attributes], ...]] = {
    "otel_ebpf.tcp.connections.opened": (("opened", {}),),
    "otel_ebpf.tcp.connections.failed": tuple(
        (reason, {"otel_ebpf.tcp.failure": reason})
        for reason in ("refused", "timeout", "unreachable", "reset")
    ),
    "otel_ebpf.tcp.retransmits": (("retransmits", {}),),
    "otel_ebpf.tcp.resets": (
        ("resets_in", {"network.io.direction": "receive"}),
        ("resets_out", {"network.io.direction": "transmit"}),
    ),
    "otel_ebpf.tcp.bytes": (
        ("bytes_tx", {"network.io.direction": "transmit"}),
        ("bytes_rx", {"network.io.direction": "receive"}),
    ),
}
SERIES_METRICS = tuple(_SERIES)


class _Reported:
    """A live connection's counters as last added, and the last scan that saw it."""

    __slots__ = ("counters", "key", "seen")

    def __init__(self, key: PeerKey, counters: _Counters) -> None:
        self.key = key
        self.counters = counters
        self.seen = 0


def peer_key(service: str, role: Role, local: Endpoint | None, remote: Endpoint) -> PeerKey:
    """The server port, not the client's ephemeral one (that would be a series per
    connection); direction: active = this end connected, passive = it accepted."""
    server_port = remote.port if role == Role.CLIENT else (local.port if local else 0)
    direction = "active" if role == Role.CLIENT else "passive"
    return (service, remote.address, server_port, direction)


class TcpHealth:
    def __init__(
        self,
        metrics: CollectorMetrics,
        service_of_pid: Callable[[int], str],
        top_n: int = TOP_N,
        include: Callable[[int], bool] | None = None,
    ) -> None:
        self._m = metrics
        self._service_of_pid = service_of_pid
        self._include = include  # a sidecar's pod: others' connections are not counted
        self._top_n = top_n
        self._ranked_n = top_n - max(1, top_n // 10)  # the rest are free for newcomers
        self._lock = threading.Lock()  # observations are read on the exporter's thread
        self._series: dict[PeerKey, TcpTotals] = {}  # top-N peers and overflow series
        self._attributes: dict[PeerKey, Attributes] = {}
        self._attribute_items: dict[PeerKey, Series] = {}
        self._volume: dict[PeerKey, float] = {}  # candidates, bounded by 4 * top_n
        self._admitted: set[PeerKey] = set()
        self._reported: dict[tuple[int, int], _Reported] = {}  # (sk, generation)
        self._scans = 0
        self._next_rerank = 0
        metrics.tcp_series = self.observations

    # -- input ---------------------------------------------------------------------

    def scan(
        self,
        live: Iterable[ConnCounters],
        ends: Callable[[int, int], tuple[Role, Endpoint | None, Endpoint | None] | None],
        now_ns: int,
    ) -> None:
        """Add what live connections did since the last scan. `ends(sk, gen)` gives
        a connection's role and ends as the tracker knows them (None: not known)."""
        self._scans += 1
        for c in live:
            if self._include and not self._include(c.pid):
                continue
            ident = (c.sk, c.gen)
            prev = self._reported.get(ident)
            if prev is None:
                # The tracker's role: the kernel's is unknown for a connection
                # opened before the probes (a pool's long-lived connections).
                known = ends(c.sk, c.gen)
                if known is None:
                    continue
                role, local, remote = known
                if remote is None or role == Role.UNKNOWN:
                    continue
                key = peer_key(self._service_of_pid(c.pid), role, local, remote)
                prev = self._reported[ident] = _Reported(key, _NONE)
                delta = _growth(_NONE, c)
                delta.opened = 1
            else:
                delta = _growth(prev.counters, c)
            prev.counters, prev.seen = c, self._scans
            self._add(prev.key, delta)
        # A connection missing from two scans in a row closed without a close event
        # reaching us (ring buffer full); one missing scan is a close still queued.
        for ident, rep in list(self._reported.items()):
            if self._scans - rep.seen >= 2:
                del self._reported[ident]
        self.maintain(now_ns)

    def closed(self, ev: ConnClose) -> None:
        if self._include is not None and not self._include(ev.pid):
            return
        prev = self._reported.pop((ev.sk, ev.opened), None) if ev.opened else None
        if prev is not None:
            key = prev.key
        elif ev.remote is not None and ev.role != Role.UNKNOWN:
            key = self._key(ev.pid, ev.role, ev.local, ev.remote)
        else:
            return  # never reported live, and the kernel cannot say which end it is
        failure = ev.failure
        delta = _growth(prev.counters if prev else _NONE, ev)
        if failure is not None:
            delta.bytes_tx = delta.bytes_rx = 0  # a connect that failed moved nothing
            setattr(delta, failure, 1)
        else:
            delta.opened = 0 if prev else 1  # a live scan counted it already
            if ev.resets_in:
                delta.reset = 1  # it opened, then the peer aborted it
        self._add(key, delta)
        if failure is None and (ev.opened or ev.srtt_us):
            attrs = self._measurement_attributes(key)
            if ev.opened:
                self._m.tcp_duration.record((ev.ts - ev.opened) / 1e9, attrs)
            if ev.srtt_us:
                self._m.tcp_rtt.record(ev.srtt_us / 1e6, attrs)

    def reset_sent(self, pid: int, role: Role, local: Endpoint | None, remote: Endpoint) -> None:
        """A RST sent after the connection closed (an abortive close)."""
        if self._include is not None and not self._include(pid):
            return
        self._add(self._key(pid, role, local, remote), TcpTotals(resets_out=1))

    def _key(self, pid: int, role: Role, local: Endpoint | None, remote: Endpoint) -> PeerKey:
        return peer_key(self._service_of_pid(pid) if pid else "unknown", role, local, remote)

    def _add(self, key: PeerKey, delta: TcpTotals) -> None:
        volume = delta.volume()
        if volume == 0:
            return
        if key not in self._volume and len(self._volume) >= 4 * self._top_n:
            self._forget_quietest()
        self._volume[key] = self._volume.get(key, 0.0) + volume
        if key not in self._admitted and len(self._admitted) < self._top_n:
            self._admitted.add(key)
        target = key if key in self._admitted else _overflow(key)
        with self._lock:
            totals = self._series.get(target)
            if totals is None:
                totals = self._series[target] = TcpTotals()
            totals.add(delta)

    def _forget_quietest(self) -> None:
        """Make room among the candidates: drop the quietest quarter not in the top N."""
        candidates = sorted((v, k) for k, v in self._volume.items() if k not in self._admitted)
        for _, key in candidates[: max(1, len(candidates) // 4)]:
            del self._volume[key]

    # -- ranking -------------------------------------------------------------------

    def maintain(self, now_ns: int) -> None:
        """Every RERANK_INTERVAL: the top by recent volume keep their own series."""
        if now_ns < self._next_rerank:
            return
        self._next_rerank = now_ns + RERANK_INTERVAL_NS
        ranked = sorted(
            self._volume,
            key=lambda k: self._volume[k] * (KEPT_BONUS if k in self._admitted else 1.0),
            reverse=True,
        )
        top = set(ranked[: self._ranked_n])
        with self._lock:
            for key in self._admitted - top:  # demoted: its totals go to the overflow
                totals = self._series.pop(key, None)
                self._attributes.pop(key, None)
                self._attribute_items.pop(key, None)
                if totals is not None:
                    self._series.setdefault(_overflow(key), TcpTotals()).add(totals)
        self._admitted = top
        for key in self._volume:
            self._volume[key] /= 2  # recent volume counts most

    # -- output --------------------------------------------------------------------

    def _measurement_attributes(self, key: PeerKey) -> Series:
        """The attributes `key`'s measurements go to now (its own, or its overflow's),
        as the histograms take them, made once per series."""
        series = key if key in self._admitted else _overflow(key)
        items = self._attribute_items.get(series)
        if items is None:
            items = self._attribute_items[series] = tuple(self._attributes_of(series).items())
        return items

    def _attributes_of(self, series: PeerKey) -> Attributes:
        attrs = self._attributes.get(series)
        if attrs is None:
            service, address, port, direction = series
            attrs = {"service.name": service, "network.peer.address": address}
            if port:
                attrs["server.port"] = port
            attrs["direction"] = direction
            attrs = self._attributes.setdefault(series, attrs)
        return attrs

    def observations(self, metric: str) -> list[Observation]:
        """The series of one TCP counter (called by the metric readers)."""
        with self._lock:
            series = list(self._series.items())
        out = []
        for key, totals in series:
            attrs = self._attributes_of(key)
            for field, extra in _SERIES[metric]:
                value = getattr(totals, field)
                if value:
                    out.append(Observation(value, {**attrs, **extra} if extra else attrs))
        return out


def _overflow(key: PeerKey) -> PeerKey:
    return (key[0], OVERFLOW_PEER, 0, key[3])


def _growth(before: _Counters, now: _Counters) -> TcpTotals:
    """What a connection did between two of the kernel's reports of it (its
    counters only grow; resets saturate at 255)."""
    return TcpTotals(
        retransmits=max(now.retransmits - before.retransmits, 0),
        resets_in=max(now.resets_in - before.resets_in, 0),
        resets_out=max(now.resets_out - before.resets_out, 0),
        bytes_tx=max(now.bytes_egress - before.bytes_egress, 0),
        bytes_rx=max(now.bytes_ingress - before.bytes_ingress, 0),
    )
