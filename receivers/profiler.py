"""On-CPU profiling receiver: bpf/profile.bpf.c on a CPU-clock perf event of every
CPU, its counts read once per interval as `StackCount` records.

The kernel aggregates: a sample costs a stack walk and a map increment in the
sampled thread's context, never a record to user space.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from importlib import resources
from typing import Any

from otel_ebpf.memory import release_compiler_memory
from otel_ebpf.model import StackCount
from otel_ebpf.receivers.base_types import ReceiverError

log = logging.getLogger(__name__)

# 49 Hz: about 2 % of one sample's cost per CPU-second; off the 50/100/250/1000 Hz
# of timers and schedulers (a sampler in step with periodic work sees only one
# phase of it); 49 samples per busy CPU-second are enough for a function's share
# within a few points over a one-minute profile.
DEFAULT_FREQUENCY = 49
MAX_FREQUENCY = 999
# A program still running on another CPU when the maps are swapped finishes
# within microseconds; the read waits this long before taking the old pair.
_SETTLE_S = 0.002
_EFAULT = 14


def _number(value: Any) -> int:
    """A map value as bcc's batch reads give it: a ctypes number or an int."""
    return int(getattr(value, "value", value))


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def stack_slots(frequency: int, interval_s: float, cpus: int) -> int:
    """Room for every sample of an interval to have a stack of its own (each a
    kilobyte of locked memory), at least 2,048 and at most 32,768 per map; the
    spill map beside it has a quarter of that (at least 64)."""
    return min(32768, max(2048, _pow2_at_least(int(frequency * interval_s * cpus))))


class CpuProfiler:
    """Owns the sampling program; `read` hands over what was counted since the last."""

    def __init__(
        self,
        frequency: int = DEFAULT_FREQUENCY,
        interval_s: float = 10.0,
        pid: int | None = None,
        tie_in: bool = False,
        off_cpu: bool = False,
        stacks: int | None = None,
    ) -> None:
        """`pid`: sample that process only (else every process but the collector).
        `tie_in`: read the socket receiver's `serving` map (it must be loaded first).
        `off_cpu`: also measure blocked time (sched:sched_switch, every context switch).
        `stacks`: room in each stack map, a power of two (default: `stack_slots`)."""
        if not 1 <= frequency <= MAX_FREQUENCY:
            raise ValueError(f"frequency must be 1..{MAX_FREQUENCY} Hz")
        if stacks is not None and (stacks <= 0 or stacks & (stacks - 1)):
            # the kernel rounds a stack map up to one: ids past `stacks` would read as spilled
            raise ValueError(f"room for {stacks} stacks is not a power of two")
        self.frequency = frequency
        self.period_ns = 1_000_000_000 // frequency
        self._pid = pid
        self._tie_in = tie_in
        self.off_cpu = off_cpu
        self._stacks = stacks or stack_slots(frequency, interval_s, os.cpu_count() or 1)
        self._bpf: Any = None

    def start(self) -> None:
        """Compile, load and attach; raises ReceiverError with a readable reason."""
        try:
            from bcc import BPF, PerfSWConfig, PerfType
        except ImportError as exc:
            raise ReceiverError(
                "the bcc Python package is not importable; run scripts/setup.sh"
            ) from exc
        cflags = [
            f"-DSELF_TGID={os.getpid()}",
            f"-DMAX_STACKS={self._stacks}",
            f"-DSPILL_STACKS={max(64, self._stacks // 4)}",
            f"-DMAX_SAMPLE_KEYS={2 * self._stacks}",
        ]
        if self._pid is not None:
            cflags.append(f"-DTARGET_PID={self._pid}")
        if self._tie_in:
            cflags.append("-DTIE_IN")
        if self.off_cpu:
            cflags.append("-DOFF_CPU")
        source = resources.files("otel_ebpf.bpf").joinpath("profile.bpf.c").read_text()
        try:
            bpf = BPF(text=source, cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception on compile/load errors
            raise ReceiverError(
                f"loading the profiling program failed ({str(exc).strip().splitlines()[-1]})"
            ) from exc
        try:
            bpf.attach_perf_event(
                ev_type=PerfType.SOFTWARE,
                ev_config=PerfSWConfig.CPU_CLOCK,
                fn_name="on_cpu_sample",
                sample_period=self.period_ns,
                cpu=-1,
            )
        except Exception as exc:
            bpf.cleanup()
            raise ReceiverError(
                f"cannot open CPU-clock perf events ({exc}); perf_event_open needs "
                "CAP_PERFMON or CAP_SYS_ADMIN, and /proc/sys/kernel/perf_event_paranoid "
                "may forbid it in containers"
            ) from exc
        self._bpf = bpf
        release_compiler_memory()
        log.info(
            "CPU profiling: %d Hz per CPU%s, room for %d stacks per interval%s",
            self.frequency,
            " and off-CPU time" if self.off_cpu else "",
            self._stacks,
            f", process {self._pid} only" if self._pid is not None else "",
        )

    def read(self) -> list[StackCount]:
        """What was counted since the last read (the kernel goes on counting into
        the other pair of maps meanwhile)."""
        bpf = self._bpf
        if bpf is None:
            return []
        active = bpf["active"]
        zero = ctypes.c_int(0)
        which = active[zero].value
        active[zero] = ctypes.c_uint(1 - which)
        time.sleep(_SETTLE_S)
        side = "b" if which else "a"
        counts = bpf[f"counts_{side}"]
        stacks, spill = bpf[f"stacks_{side}"], bpf[f"spill_{side}"]
        taken = list(counts.items_lookup_and_delete_batch())
        blocked = (
            list(bpf[f"off_ns_{side}"].items_lookup_and_delete_batch()) if self.off_cpu else []
        )
        walked: dict[int, tuple[int, ...]] = {}

        def walk(stack_id: int) -> tuple[int, ...]:
            if stack_id < 0:
                return ()
            found = walked.get(stack_id)
            if found is None:
                try:
                    if stack_id < self._stacks:
                        found = tuple(stacks.walk(stack_id))
                    else:  # refused by its bucket's holder in the stack map
                        found = tuple(spill.walk(stack_id - self._stacks))
                except KeyError:  # stored after the last read's clear: lost
                    found = ()
                walked[stack_id] = found
            return found

        def record(key: Any, samples: int, off_cpu_ns: int = 0) -> StackCount:
            return StackCount(
                pid=key.pid,
                comm=bytes(key.comm).split(b"\0", 1)[0].decode(errors="replace"),
                user=walk(key.user_stack),
                kernel=walk(key.kernel_stack),
                samples=samples,
                tid=key.tid,
                request=key.request,
                off_cpu_ns=off_cpu_ns,
            )

        out = [record(key, _number(value)) for key, value in taken]
        out += (record(key, 0, _number(value)) for key, value in blocked)
        self._clear_stacks(stacks, spill, which)
        return out

    def _clear_stacks(self, stacks: Any, spill: Any, which: int) -> None:
        """Empty a side's stack maps for their next turn, but for the stacks of
        threads still blocked since it was active (their time is added to them
        when they run), and of those that ran again since the read above (their
        time waits in the side's off-CPU map for its next read)."""
        if not self.off_cpu:
            stacks.clear()
            spill.clear()
            return
        keep: set[int] = set()
        for _tid, b in self._bpf["off_since"].items_lookup_batch():
            if b.side == which:
                keep.update((b.user_stack, b.kernel_stack))
        for key in self._bpf["off_ns_b" if which else "off_ns_a"]:
            keep.update((key.user_stack, key.kernel_stack))
        for table, base in ((stacks, 0), (spill, self._stacks)):
            for key in list(table.keys()):
                if base + key.value not in keep:
                    del table[key]

    def tally(self, index: int) -> int:
        bpf = self._bpf
        if bpf is None:
            return 0
        return int(bpf["tallies"].sum(ctypes.c_int(index)).value)

    @property
    def samples_taken(self) -> int:
        return self.tally(0)

    @property
    def samples_lost(self) -> int:
        """Samples the counts map had no room for (since start)."""
        return self.tally(1)

    @property
    def stacks_lost(self) -> int:
        """Samples whose stack the stack map had no room for (counted, frames unknown)."""
        return self.tally(2)

    def stop(self) -> None:
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()
