"""Continuous CPU profiling: the kernel's counts, read every couple of seconds
(while the processes are there to be symbolised), labelled with the resource
their spans carry, tied to the spans they were sampled under, and handed over
as one `ProfileWindow` per export interval.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from otel_ebpf.model import Frame, ProfiledStack, ProfileWindow, StackCount
from otel_ebpf.processors.profiling.demangle import Demangler
from otel_ebpf.processors.profiling.symbolize import KERNEL, UNKNOWN, Symbolizer
from otel_ebpf.telemetry import SelfTelemetry, fault_summary

if TYPE_CHECKING:
    from otel_ebpf.profile_exporters import ProfileExporter
    from otel_ebpf.receivers.profiler import CpuProfiler

log = logging.getLogger(__name__)

READ_INTERVAL_S = 2.0  # how often the kernel's counts are read and symbolised
NO_STACK = (Frame("[no stack]", UNKNOWN),)


class SpanTies:
    """Server spans a profile sample can be tied to: (thread, request start) -> ids.
    Only requests that had their thread to themselves are registered (see
    `Correlator`): on an event loop a sample cannot tell which request it served."""

    def __init__(self, capacity: int = 65536) -> None:
        self._ids: OrderedDict[tuple[int, int], tuple[int, int]] = OrderedDict()
        self._capacity = capacity

    def add(self, tid: int, request_start: int, trace_id: int, span_id: int) -> None:
        self._ids[(tid, request_start)] = (trace_id, span_id)
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def get(self, tid: int, request_start: int) -> tuple[int, int] | None:
        return self._ids.get((tid, request_start))


ResourceOf = Callable[[int, str], dict[str, object]]


class ProfileAssembler:
    """Symbolises each read's counts into stacks and sums them until `flush`."""

    def __init__(
        self,
        period_ns: int,
        symbolizer: Symbolizer | None = None,
        resource_of: ResourceOf | None = None,
        ties: SpanTies | None = None,
        include: Callable[[int, str], bool] | None = None,
        off_cpu: bool = False,
        demangler: Demangler | None = None,
    ) -> None:
        self.period_ns = period_ns
        self._demangler = demangler or Demangler()
        self.off_cpu = off_cpu
        self._symbolizer = symbolizer or Symbolizer()
        self._resource_of = resource_of or (lambda _pid, _comm: {})
        self._ties = ties
        self._include = include or (lambda _pid, _comm: True)
        self._pending_ties: list[tuple[tuple[int, int, tuple[Frame, ...]], StackCount]] = []
        self._reset(time.time_ns())

    def _reset(self, start_ns: int) -> None:
        self._start_ns = start_ns
        # (pid, thread name, frames, trace id, span id) -> [samples, off-CPU ns]
        self._counts: dict[tuple[int, str, tuple[Frame, ...], int, int], list[int]] = {}
        self._resources: dict[int, dict[str, object]] = {}
        self._lost = 0

    def add(self, counts: list[StackCount], lost: int = 0) -> None:
        """One read's counts (symbolised now: the processes may be gone by the flush)."""
        self._symbolizer.new_window()
        self._lost += lost
        for c in counts:
            if c.pid not in self._resources:
                if not self._include(c.pid, c.comm):
                    continue
                self._resources[c.pid] = self._resource_of(c.pid, c.comm)
            frames = self._symbolizer.frames(c.pid, c.user, c.kernel) or NO_STACK
            trace_id = span_id = 0
            if c.request and self._ties is not None:
                tied = self._ties.get(c.tid, c.request)
                if tied is None:  # its span is built when the request ends
                    self._pending_ties.append(((c.pid, c.tid, frames), c))
                    continue
                trace_id, span_id = tied
            self._count((c.pid, c.comm, frames, trace_id, span_id), c)

    def _count(self, key: tuple[int, str, tuple[Frame, ...], int, int], c: StackCount) -> None:
        found = self._counts.get(key)
        if found is None:
            self._counts[key] = [c.samples, c.off_cpu_ns]
        else:
            found[0] += c.samples
            found[1] += c.off_cpu_ns

    def flush(self, end_ns: int | None = None) -> ProfileWindow:
        """The window since the last flush; the next one starts now."""
        end_ns = end_ns or time.time_ns()
        for (pid, _tid, frames), c in self._pending_ties:
            tied = self._ties.get(c.tid, c.request) if self._ties is not None else None
            trace_id, span_id = tied or (0, 0)
            self._count((pid, c.comm, frames, trace_id, span_id), c)
        self._pending_ties.clear()
        stacks = [
            ProfiledStack(pid, comm, frames, n, trace_id, span_id, off_ns)
            for (pid, comm, frames, trace_id, span_id), (n, off_ns) in self._counts.items()
        ]
        window = ProfileWindow(
            start_ns=self._start_ns,
            end_ns=end_ns,
            period_ns=self.period_ns,
            stacks=self._readable(stacks),
            resources=self._resources,
            samples_lost=self._lost,
            off_cpu=self.off_cpu,
        )
        self._reset(end_ns)
        return window

    def _readable(self, stacks: list[ProfiledStack]) -> list[ProfiledStack]:
        """C++ and Rust names demangled, once per window for all its stacks."""
        shown = self._demangler.readable(f.function for s in stacks for f in s.frames)
        if not shown:
            return stacks
        return [
            s._replace(
                frames=tuple(Frame(shown.get(f.function, f.function), f.module) for f in s.frames)
            )
            for s in stacks
        ]


def top_functions(
    stacks: list[ProfiledStack], n: int = 15, off_cpu: bool = False
) -> list[tuple[str, str, float]]:
    """The `n` functions with the most samples at the top of their stack:
    (function, module, share of all samples), as `pprof -top` ranks them. With
    `off_cpu`, by blocked time, at the first frame outside the kernel (in the
    kernel every blocked stack ends in the scheduler)."""
    flat: dict[Frame, int] = {}
    total = 0
    for s in stacks:
        weight = s.off_cpu_ns if off_cpu else s.samples
        if not weight:
            continue
        total += weight
        frames = [f for f in s.frames if f.module != KERNEL] if off_cpu else []
        leaf = frames[0] if frames else s.frames[0]
        flat[leaf] = flat.get(leaf, 0) + weight
    ranked = sorted(flat.items(), key=lambda kv: -kv[1])[:n]
    return [(f.function, f.module, count / total) for f, count in ranked]


def registry_resources() -> ResourceOf:
    """Resource attributes as the collector's spans carry them (service.name from
    the process's environment, container and pod identity from its cgroup)."""
    from otel_ebpf.kubernetes import WorkloadIdentity
    from otel_ebpf.processes import ProcessRegistry

    registry = ProcessRegistry(identity=WorkloadIdentity(None))

    def resource_of(pid: int, comm: str) -> dict[str, object]:
        return dict(registry.get(pid, comm.encode()).resource.attributes)

    return resource_of


def profile_process(
    pid: int,
    seconds: float,
    frequency: int,
    on_read: Callable[[float], None] | None = None,
    read_every: float = 0.5,
    off_cpu: bool = False,
) -> ProfileWindow:
    """Sample one process for `seconds` (or until it exits): `otel-ebpf profile`.
    Read often: a process that exits can no longer be symbolised."""
    from otel_ebpf.receivers.profiler import CpuProfiler

    profiler = CpuProfiler(frequency=frequency, interval_s=read_every, pid=pid, off_cpu=off_cpu)
    profiler.start()
    assembler = ProfileAssembler(
        profiler.period_ns, resource_of=registry_resources(), off_cpu=off_cpu
    )
    begin = time.monotonic()
    next_read = begin + read_every
    try:
        while True:
            now = time.monotonic()
            done = now - begin >= seconds or not os.path.exists(f"/proc/{pid}")
            if done or now >= next_read:
                assembler.add(profiler.read())
                next_read = now + read_every
                if on_read is not None:
                    on_read(now - begin)
            if done:
                break
            time.sleep(min(0.1, max(0.0, seconds - (now - begin))))
        window = assembler.flush()
        lost, stacks_lost = profiler.samples_lost, profiler.stacks_lost
    finally:
        profiler.stop()
    return window._replace(samples_lost=lost, stacks_lost=stacks_lost)


class ProfilingService:
    """The collector's profiles pipeline, on a thread of its own: every couple of
    seconds the kernel's counts are read and symbolised, every `interval` the
    window goes to each exporter. The traced processes never wait on it."""

    def __init__(
        self,
        profiler: CpuProfiler,
        interval_s: float,
        exporters: list[ProfileExporter],
        telemetry: SelfTelemetry,
        resource_of: ResourceOf | None = None,
        include: Callable[[int, str], bool] | None = None,
        ties: SpanTies | None = None,
    ) -> None:
        self._profiler = profiler
        self._interval_s = interval_s
        self._exporters = exporters
        self._telemetry = telemetry
        self._assembler = ProfileAssembler(
            profiler.period_ns,
            resource_of=resource_of,
            ties=ties,
            include=include,
            off_cpu=profiler.off_cpu,
        )
        self._stop = threading.Event()
        self._last_read = threading.Event()
        self._thread = threading.Thread(target=self._run, name="profiling", daemon=True)

    def start(self) -> None:
        """Raises ReceiverError (from the profiler) when sampling cannot start."""
        self._profiler.start()
        self._assembler.flush()  # the first window starts once sampling does
        self._thread.start()

    def stop_sampling(self, timeout_s: float = 2.0) -> None:
        """Read the kernel's counts a last time, then detach: before the socket
        program is closed (the tie-in reads one of its maps)."""
        self._stop.set()
        if self._thread.is_alive():
            self._last_read.wait(timeout_s)
        self._profiler.stop()

    def finish(self, timeout_s: float = 3.0) -> None:
        """Wait (at most `timeout_s`) for the last window's export."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        for exporter in self._exporters:
            exporter.shutdown()

    def _run(self) -> None:
        next_export = time.monotonic() + self._interval_s
        while True:
            stopping = self._stop.wait(READ_INTERVAL_S)
            try:
                self._read()
                if stopping:
                    self._last_read.set()
                if stopping or time.monotonic() >= next_export:
                    next_export = time.monotonic() + self._interval_s
                    self._export(self._assembler.flush())
            except Exception as exc:  # a bug here must not end profiling for good
                log.warning("profiling: %s", fault_summary(exc))
            if stopping:
                self._last_read.set()
                return

    def _read(self) -> None:
        t = self._telemetry
        lost = self._profiler.samples_lost
        self._assembler.add(self._profiler.read(), lost - t.profile_samples_lost)
        t.profile_samples = self._profiler.samples_taken - lost
        t.profile_samples_lost = lost
        t.profile_stacks_lost = self._profiler.stacks_lost

    def _export(self, window: ProfileWindow) -> None:
        if window.samples_lost:
            log.warning(
                "%d CPU samples not counted (the kernel's map was full between two reads)",
                window.samples_lost,
            )
        for exporter in self._exporters:
            try:
                ok = exporter.export(window)
            except Exception as exc:  # an exporter bug costs its window, not the thread
                log.warning("profile exporter %s: %s", exporter.name, fault_summary(exc))
                ok = False
            if ok:
                self._telemetry.profiles_exported += 1
            else:
                self._telemetry.profiles_export_failed += 1
