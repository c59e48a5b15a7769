"""The memory limiter: where its limit comes from (cgroup files), when it
refuses, and that it gives memory back before believing the resident size."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_ebpf.config import ConfigError, MemoryLimiterConfig, load
from otel_ebpf.doctor import INFO, OK, WARN, _memory
from otel_ebpf.memory_limit import MIB, MemoryLimiter, cgroup_memory_limit, resident_bytes


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> int | None:
    (tmp_path / "cgroup").write_text(membership)
    root = tmp_path / "fs"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text + "\n")
    return cgroup_memory_limit(str(tmp_path / "cgroup"), str(root))


def test_the_tightest_limit_on_the_path_is_taken_from_cgroup_v2(tmp_path: Path) -> None:
    limit = _cgroup(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        {
            "kubepods/memory.max": str(8 << 30),
            "kubepods/pod1/memory.max": str(512 * MIB),
            "kubepods/pod1/ctr/memory.max": "max",
        },
    )
    assert limit == 512 * MIB


def test_cgroup_v1_memory_controller_and_its_unlimited_value(tmp_path: Path) -> None:
    unlimited = "9223372036854771712"
    assert (
        _cgroup(
            tmp_path,
            "5:cpu,cpuacct:/x\n4:memory:/system.slice/otel-ebpf.service\n0::/\n",
            {
                "memory/memory.limit_in_bytes": unlimited,
                "memory/system.slice/otel-ebpf.service/memory.limit_in_bytes": str(300 * MIB),
            },
        )
        == 300 * MIB
    )
    assert _cgroup(tmp_path, "4:memory:/\n", {"memory/memory.limit_in_bytes": unlimited}) is None


def test_inside_a_cgroup_namespace_the_mount_root_is_the_own_cgroup(tmp_path: Path) -> None:
    assert _cgroup(tmp_path, "0::/\n", {"memory.max": str(256 * MIB)}) == 256 * MIB


def test_no_cgroup_file_or_no_limit_means_none(tmp_path: Path) -> None:
    assert cgroup_memory_limit(str(tmp_path / "absent"), str(tmp_path)) is None
    assert _cgroup(tmp_path, "0::/a/b\n", {}) is None
    assert _cgroup(tmp_path, "garbage\n0::relative\n", {"memory.max": "1"}) is None


def test_the_resident_size_of_this_process_is_read() -> None:
    before = resident_bytes()
    ballast = b"\1" * (64 * MIB)  # written: resident
    assert resident_bytes() - before >= 60 * MIB
    del ballast


class _Process:
    """A resident size the test sets, and what reclaiming gives back."""

    def __init__(self, resident: int, freed_by_reclaim: int = 0) -> None:
        self.resident = resident
        self.freed = freed_by_reclaim
        self.reads = 0
        self.reclaims: list[bool] = []

    def read(self) -> int:
        self.reads += 1
        return self.resident

    def reclaim(self, over_limit: bool) -> None:
        self.reclaims.append(over_limit)
        self.resident -= self.freed


def _limiter(process: _Process, interval_s: float = 0.0) -> MemoryLimiter:
    return MemoryLimiter(400 * MIB, 100 * MIB, interval_s, process.read, process.reclaim)


def test_requests_are_refused_above_the_soft_limit_and_taken_below_it() -> None:
    process = _Process(250 * MIB)
    limiter = _limiter(process)
    assert limiter.refusal() is None and process.reclaims == []
    process.resident = 350 * MIB
    refusal = limiter.refusal()
    assert refusal is not None and "350 MiB" in refusal and "soft limit (300 MiB)" in refusal
    assert process.reclaims == [False]  # heaps trimmed; below the limit, no collection
    process.resident = 300 * MIB  # at the soft limit: taken
    assert limiter.refusal() is None


def test_memory_given_back_by_reclaiming_is_not_refused_for() -> None:
    process = _Process(450 * MIB, freed_by_reclaim=200 * MIB)
    limiter = _limiter(process)
    assert limiter.refusal() is None
    assert process.reclaims == [True]  # over the limit itself: collected too
    assert limiter.resident == 250 * MIB


def test_the_size_is_read_once_per_interval_and_reclaimed_once_per_second() -> None:
    process = _Process(350 * MIB)
    limiter = _limiter(process, interval_s=3600)
    reads = process.reads  # the constructor's
    for _ in range(100):
        assert limiter.refusal() is not None
    assert process.reads == reads + 2  # one read, and again after reclaiming
    assert process.reclaims == [False]
    eager = _limiter(process)  # reads every call; reclaims still once a second
    for _ in range(100):
        eager.refusal()
    assert len(process.reclaims) == 2


def test_limits_from_the_configuration() -> None:
    def available() -> int | None:
        return 1000 * MIB

    def resident() -> int:
        return 0

    by_mib = MemoryLimiter.from_config(MemoryLimiterConfig(limit_mib=400), available, resident)
    assert (by_mib.limit, by_mib.soft_limit) == (400 * MIB, 320 * MIB)  # spike: a fifth
    spiked = MemoryLimiterConfig(limit_mib=400, spike_limit_mib=50)
    assert MemoryLimiter.from_config(spiked, available, resident).soft_limit == 350 * MIB
    default = MemoryLimiter.from_config(MemoryLimiterConfig(), available, resident)
    assert (default.limit, default.soft_limit) == (800 * MIB, 600 * MIB)
    assert default.basis == "80 % of the cgroup's limit, 1000 MiB"
    small = MemoryLimiter.from_config(MemoryLimiterConfig(limit_percentage=10), available, resident)
    assert (small.limit, small.soft_limit) == (100 * MIB, 80 * MIB)
    no_cgroup = MemoryLimiter.from_config(MemoryLimiterConfig(), lambda: None, resident)
    assert "the machine's memory" in no_cgroup.basis and no_cgroup.limit > 0


@pytest.mark.parametrize(
    "settings, message",
    [
        ("{limit_mib: 400, limit_percentage: 50}", "not both"),
        ("{limit_mib: 400, spike_limit_mib: 400}", "smaller than limit_mib"),
        ("{limit_percentage: 50, spike_limit_percentage: 60}", "smaller than limit_percentage"),
        ("{limit_mib: 400, spike_limit_percentage: 10}", "spike_limit_mib"),
        ("{spike_limit_mib: 10}", "goes with limit_mib"),
        ("{check_interval: 0s}", "check_interval"),
    ],
)
def test_contradictory_settings_are_refused_by_name(
    tmp_path: Path, settings: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "receivers: {ebpf: {}}\n"
        f"processors: {{memory_limiter: {settings}}}\n"
        "exporters: {debug: {}}\n"
        "service: {pipelines: {traces: "
        "{receivers: [ebpf], processors: [memory_limiter], exporters: [debug]}}}\n"
    )
    with pytest.raises(ConfigError, match=message) as refused:
        load(path, env={})
    assert "processors.memory_limiter" in str(refused.value)


def test_the_embedded_default_limits_memory_as_the_collector_advises() -> None:
    config = load(env={})
    assert config.traces.processors[0] == "memory_limiter"
    assert config.memory_limiter == MemoryLimiterConfig()


def test_doctor_says_what_the_default_limiter_leaves_apps() -> None:
    shipped = _memory(lambda: 512 * MIB)
    assert shipped.status == OK and "above 307 MiB" in shipped.detail
    tight = _memory(lambda: 128 * MIB)  # soft limit 76 MiB: under the collector at work
    assert tight.status == WARN and "raise the limit" in tight.detail
    assert _memory(lambda: None).status == INFO
