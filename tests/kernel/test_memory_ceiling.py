"""The collector in a real memory cgroup of the size the shipped manifests give
it (512 MiB), with its default configuration: the memory limiter takes its
limit from the cgroup, and a burst of large OTLP requests from four apps, with
the backend down, is answered without the kernel killing the collector.
Without the limiter in the pipeline the kernel killed it (exit -9), as it did
the build before with one app's burst."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from test_otlp_limits import EXPORT, MiB, request

from harness import CollectorProcess, free_port

LIMIT = 512 * MiB
V1_MEMORY = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")


def _new_memory_cgroup(name: str) -> Path | None:
    """A child memory cgroup under the v1 memory hierarchy, or the v2 root where
    it delegates the memory controller; None where neither is there."""
    if (V1_MEMORY / "memory.limit_in_bytes").exists():
        path = V1_MEMORY / name
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(LIMIT))
        return path
    control = V2_ROOT / "cgroup.subtree_control"
    if control.exists() and "memory" in control.read_text().split():
        path = V2_ROOT / name
        path.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(LIMIT))
        return path
    return None


def _oom_kills(cgroup: Path) -> int:
    """The kernel's count of processes it killed for the cgroup's limit."""
    for name in ("memory.oom_control", "memory.events"):  # v1, v2
        if (cgroup / name).exists():
            fields = (cgroup / name).read_text().split()
            return int(fields[fields.index("oom_kill") + 1])
    raise AssertionError(f"no OOM count in {cgroup}")


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    cgroup = _new_memory_cgroup(f"otel-ebpf-test-{os.getpid()}")
    if cgroup is None:
        pytest.skip("this machine has no memory cgroup controller to put a limit on")
    yield cgroup
    cgroup.rmdir()  # its processes have ended


def test_a_burst_of_large_requests_under_a_cgroup_limit_is_survived(
    tmp_path: Path, memory_cgroup: Path
) -> None:
    down = {"otlp": {"endpoint": f"127.0.0.1:{free_port()}", "insecure": True}}
    collector = CollectorProcess(tmp_path, down, otlp_in=True, cgroup=memory_cgroup)
    log = collector.log_path
    assert "80 % of the cgroup's limit, 512 MiB" in log.read_text(), log.read_text()
    large = request("memory-ceiling")
    large.resource_spans[0].scope_spans[0].spans[0].attributes.append(
        KeyValue(key="blob", value=AnyValue(string_value="x" * (3 * MiB)))
    )
    body = large.SerializeToString()
    # four apps, each with its own connection, 100 requests each: 1.2 GiB in all
    channels = [
        grpc.insecure_channel(
            f"127.0.0.1:{collector.otlp_grpc_port}",
            options=[("grpc.max_send_message_length", -1), ("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(4)
    ]
    exports = [
        c.unary_unary(EXPORT, request_serializer=None, response_deserializer=None) for c in channels
    ]
    calls = [export.future(body, timeout=60) for _ in range(100) for export in exports]
    codes = {call.code() for call in calls}
    for channel in channels:
        channel.close()
    retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grpc.StatusCode.OK in codes and codes <= {grpc.StatusCode.OK, *retryable}, codes
    assert collector.proc.poll() is None, log.read_text()
    assert collector.stop() == 0, log.read_text()
    assert _oom_kills(memory_cgroup) == 0
    assert "Traceback" not in log.read_text()
