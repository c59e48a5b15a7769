"""The span budget: how many requests get a span, so the collector never costs
the node more than its share.

The kernel decides at each HTTP/1 request's and database command's start (`bpf/sockets.bpf.c`,
`shed_request`): a request whose 56-bit random value is at least the threshold
is captured, and every other is shed there, before any of its bytes reach the
ring buffer; its RED metrics are counted in the kernel either way. This is the
OpenTelemetry specification's consistent probability sampling: a kept span
carries `ot=th:<threshold>` in its tracestate, and the random value becomes its
trace's randomness, so tail samplers and span metrics downstream can weigh it.

`SpanBudget` sets the threshold from what the collector costs: its CPU time
against a budget of `cpu_per_1k_requests` of one core per 1,000 requests a
second (never below `min_cpu`, never above `max_cpu`), in powers of two of the capture probability
(1, 1/2, 1/4, ...) so adjusted counts stay whole numbers. Over budget it sheds
more at once: the fewest halvings that would bring its CPU within the budget, or
what a span cost times the request rate, whichever is more (a collector that
fell behind uses less CPU than its traffic asks for). Halving the spans halves
only their part of the CPU, so that is the least it takes, and the CPU it leaves
is over half the budget: no step back follows. Well under it (below 40 %), it
takes one step back, so it settles instead of swinging. Events lost are
over budget whatever the CPU says. Between two of its steps a burst can fill
the ring buffer (8 MiB in about a second): while it is over half unread the
kernel sheds every request at its start (`otel_ebpf/span_budget.py`).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

from opentelemetry.trace.span import TraceState

RAND_BITS = (1 << 56) - 1
MAX_HALVINGS = 12  # 1 request in 4,096 at least keeps a span
_STEP_BACK = 0.4  # under this share of the budget, capture twice as many


def threshold_for(probability: float) -> int:
    """The `th` threshold that keeps `probability` of requests (0 keeps all)."""
    if not 0.0 < probability <= 1.0:
        raise ValueError("a capture probability is in (0, 1]")
    return min(round((1.0 - probability) * (1 << 56)), RAND_BITS)


@lru_cache(maxsize=64)
def sampling_state(threshold: int) -> TraceState:
    """tracestate `ot=th:T`: T in hex, 14 digits less trailing zeros."""
    digits = f"{threshold:014x}".rstrip("0") or "0"
    return TraceState([("ot", f"th:{digits}")])


def adjusted_count(threshold: int) -> int:
    """How many requests a kept one stands for, whole (exact for powers of two)."""
    return max(round((1 << 56) / ((1 << 56) - threshold)), 1)


class BudgetSettings(NamedTuple):
    cpu_per_1k_requests: float  # cores per 1,000 requests/s; 0: no budget, capture all
    min_cpu: float  # cores the collector may always use
    probability: float | None  # a fixed capture probability instead of a budget
    max_cpu: float = math.inf  # cores it may never go past, however busy the node


class SpanBudget:
    """The threshold for the kernel, from the collector's CPU and request rate."""

    def __init__(self, settings: BudgetSettings) -> None:
        self.settings = settings
        self.halvings = 0
        self.threshold = 0
        self.cpu = 0.0  # cores used over the last interval
        self.allowed = 0.0  # and what the budget allowed
        if settings.probability is not None and settings.probability < 1.0:
            self.threshold = threshold_for(settings.probability)

    @property
    def adaptive(self) -> bool:
        s = self.settings
        return s.probability is None and s.cpu_per_1k_requests > 0

    @property
    def probability(self) -> float:
        return ((1 << 56) - self.threshold) / (1 << 56)

    def update(
        self,
        cpu_seconds: float,
        wall_seconds: float,
        requests: int,
        spans: int = 0,
        behind: bool = False,
    ) -> bool:
        """One interval's cost and traffic (`spans` built in it; `behind`: the
        kernel shed requests because the ring buffer was unread); True when the
        threshold changed."""
        if not self.adaptive or wall_seconds <= 0:
            return False
        s = self.settings
        self.cpu = cpu_seconds / wall_seconds
        rate = requests / wall_seconds
        self.allowed = min(s.max_cpu, max(s.min_cpu, s.cpu_per_1k_requests * rate / 1000.0))
        before = self.halvings
        # A collector starved of CPU (nice 19 on a busy node) can stay under its
        # budget while the ring buffer fills: behind is over budget too.
        if self.cpu > self.allowed or behind:
            steps = max(1, math.ceil(math.log2(max(self.cpu / self.allowed, 1.0))))
            if spans > 0 and requests > 0:
                # The CPU used understates the demand when the collector is behind
                # (a ring read down, every request shed meanwhile): the share that
                # fits is the budget over what a span costs at this request rate.
                fits = self.allowed / (cpu_seconds / spans * rate)
                if fits < 1.0:
                    steps = max(steps, math.ceil(math.log2(1.0 / fits)) - self.halvings)
            self.halvings = min(self.halvings + steps, MAX_HALVINGS)
        elif self.cpu < _STEP_BACK * self.allowed and self.halvings:
            self.halvings -= 1
        return self._moved(before)

    def events_were_lost(self) -> bool:
        """Events were lost: shed twice as many, whatever the CPU says."""
        if not self.adaptive or self.halvings >= MAX_HALVINGS:
            return False
        self.halvings += 1
        return self._moved(self.halvings - 1)

    def _moved(self, before: int) -> bool:
        if self.halvings == before:
            return False
        self.threshold = threshold_for(0.5**self.halvings) if self.halvings else 0
        return True
