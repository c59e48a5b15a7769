"""The span budget at work: the kernel told its threshold, the ring buffer
watched, the collector's CPU weighed once a second (`processors.budget` decides;
this carries the decisions out and says them)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from otel_ebpf.config import SpanBudgetConfig
from otel_ebpf.processors.budget import BudgetSettings, SpanBudget, adjusted_count
from otel_ebpf.receivers.sockets import SocketReceiver
from otel_ebpf.telemetry import SelfTelemetry

log = logging.getLogger(__name__)

BACKLOG_SAID_EVERY_S = 60.0
# Without a span exporter, the defaults (each unless set): spans then only feed
# what the kernel cannot count, so they get a tenth of a span pipeline's share.
# A request seen at its client and its server counts twice: 10 µs for both ends.
METRICS_ONLY_CPU_PER_1K_REQUESTS = 0.005
METRICS_ONLY_MIN_CPU = 0.02
# The cap unless set: a tenth of the node's CPUs, at most half a core. A small
# node at saturation has no idle core to lend: on two CPUs, half a core cost
# HTTPS-saturated nginx a third of its throughput (bench/nginx_overhead.py).
NODE_SHARE = 0.1
MAX_CPU = 0.5


def default_max_cpu(cpus: int) -> float:
    """The cap on a node of `cpus` CPUs when none is set."""
    return min(MAX_CPU, NODE_SHARE * cpus)


def budget_settings(
    config: SpanBudgetConfig, spans_leave: bool, cpus: int | None = None
) -> BudgetSettings:
    """The budget's settings as configured; when no span leaves the collector,
    the metrics-only defaults for those not set; without a cap, the node's
    (`cpus`: the node's CPUs, os.cpu_count() unless given), never below the
    floor. Its RED metrics, the service graph's client side and TCP health
    count every request in the kernel either way; the spans built are read only
    for the graph's server side, the server/network split and the verdicts,
    each weighted by what it stands for."""
    cpu, floor = config.cpu_per_1k_requests, config.min_cpu
    if not spans_leave:
        given = config.model_fields_set
        if "cpu_per_1k_requests" not in given:
            cpu = METRICS_ONLY_CPU_PER_1K_REQUESTS
        if "min_cpu" not in given:
            floor = METRICS_ONLY_MIN_CPU  # below any cap: the 0.1 default is too
    cap = config.max_cpu
    if cap is None:
        cap = max(floor, default_max_cpu(cpus or os.cpu_count() or 1))
    return BudgetSettings(cpu, floor, config.probability, cap)


class SpanBudgetKeeper:
    def __init__(
        self,
        budget: SpanBudget,
        receiver: SocketReceiver,
        telemetry: SelfTelemetry,
        service_of_pid: Callable[[int], str],
        spans_leave: bool = True,
    ) -> None:
        self.budget = budget
        self._spans_leave = spans_leave
        # what a kept request gets, as the log says it
        self._kept = (
            "get a span"
            if spans_leave
            else "are read for the service graph's server side and the server/network split"
        )
        self._receiver = receiver
        self._telemetry = telemetry
        self._service_of_pid = service_of_pid
        self._uncounted_said: dict[int, int] = {}  # by process: as last said
        # cpu, wall, spans built, shed: at the last tick (the first: the loop's start)
        self._mark = (0.0, 0.0, 0, 0)
        self._lost = 0  # events lost at the last tick
        self._backlog_said = -BACKLOG_SAID_EVERY_S

    def start(self, keep_slower_than: float) -> None:
        """The receiver is loaded: give the kernel the budget's settings."""
        receiver, budget = self._receiver, self.budget
        receiver.set_span_threshold(budget.threshold)
        receiver.keep_slower_than(keep_slower_than)
        if budget.adaptive:
            receiver.watch_ring()
            s = budget.settings
            log.info(
                "%srequests %s within %.2g cores per 1,000 requests/s (at least %.2g, at "
                "most %.2g, OTEL_EBPF_SPAN_BUDGET*); RED metrics count every one in the kernel",
                "" if self._spans_leave else "metrics only (no span exporter): ",
                self._kept,
                s.cpu_per_1k_requests,
                s.min_cpu,
                s.max_cpu,
            )
        if budget.threshold:
            self._telemetry.span_budget_one_in = adjusted_count(budget.threshold)
            log.info(
                "span budget: a fixed %.4g of HTTP/1 requests, Redis commands and PostgreSQL "
                "queries %s",
                budget.probability,
                self._kept,
            )

    def restart_clock(self) -> None:
        """The next tick weighs the CPU and traffic from now."""
        t = self._telemetry
        shed = t.requests_shed + t.requests_shed_backlog
        self._mark = (time.process_time(), time.monotonic(), t.spans_built, shed)

    def tick(self) -> None:
        """Once a second: the collector's CPU against what its traffic allows; a
        new threshold goes to the kernel and is said."""
        t = self._telemetry
        backlog0 = t.requests_shed_backlog
        shed = self.count_shed()
        cpu, wall = time.process_time(), time.monotonic()
        cpu0, wall0, built0, shed0 = self._mark
        self._mark = (cpu, wall, t.spans_built, shed)
        built = t.spans_built - built0
        requests = built + shed - shed0  # each given a span, and each shed in its stead
        behind = t.requests_shed_backlog > backlog0
        if wall > wall0:
            t.collector_cpu_millicores = round(1000 * (cpu - cpu0) / (wall - wall0))
        lost, self._lost = t.events_lost > self._lost, t.events_lost
        if lost and self.budget.events_were_lost():
            self._new_threshold("events were lost: the ring buffer overflowed")
            return
        moved = self.budget.update(cpu - cpu0, wall - wall0, requests, built, behind)
        t.span_budget_allowed_millicores = round(1000 * self.budget.allowed)
        if moved:
            self._new_threshold(
                ("the ring buffer fell behind; " if behind else "")
                + f"collector CPU {self.budget.cpu:.2f} of the {self.budget.allowed:.2f} cores "
                f"allowed at {requests / max(wall - wall0, 1e-9):.0f} requests/s"
            )

    def count_shed(self) -> int:
        """The kernel's shed counts into self-telemetry (each tick, and at stop:
        none goes unsaid); what grew since last read is said. Returns all shed,
        by the threshold or a backlog."""
        t = self._telemetry
        _, shed, uncounted, backlog = self._receiver.shed_counts()
        if backlog > t.requests_shed_backlog:
            self._say_backlog()
        if uncounted > t.requests_shed_uncounted:
            log.warning(
                "%d pipelined HTTP/1 requests or database commands behind a shed one were "
                "neither counted nor traced (the kernel keeps one request per connection): %s",
                uncounted - t.requests_shed_uncounted,
                self._uncounted_by_process(),
            )
        t.requests_shed, t.requests_shed_uncounted, t.requests_shed_backlog = (
            shed,
            uncounted,
            backlog,
        )
        return shed + backlog

    def _uncounted_by_process(self) -> str:
        """Whose requests went uncounted since last said: "service (pid N): n, ..."."""
        now = self._receiver.uncounted_processes()
        said, self._uncounted_said = self._uncounted_said, now
        grown = sorted(  # the most first
            (-(n - said.get(pid, 0)), pid) for pid, n in now.items() if n > said.get(pid, 0)
        )
        return ", ".join(f"{self._service_of_pid(pid)} (pid {pid}): {-n}" for n, pid in grown)

    def _say_backlog(self) -> None:
        """A ring buffer over half unread has the kernel shed every request at its
        start until it is down to a quarter: a burst is shed whole, never cut
        mid-request by an overflow. Said once a minute at most."""
        now = time.monotonic()
        if now - self._backlog_said >= BACKLOG_SAID_EVERY_S:
            self._backlog_said = now
            log.info(
                "ring buffer over half unread: new HTTP/1 requests and database commands get no "
                "span until it is read down to a quarter (requests_shed_backlog; metrics "
                "count them)"
            )

    def _new_threshold(self, why: str) -> None:
        self._receiver.set_span_threshold(self.budget.threshold)
        halvings = self.budget.halvings
        self._telemetry.span_budget_one_in = 2**halvings
        log.info(
            "span budget: %s of HTTP/1 requests, Redis commands and PostgreSQL queries %s "
            "(%s; metrics still count every one)",
            f"1 in {2**halvings}" if halvings else "all",
            self._kept,
            why,
        )
