"""bpf/sockets.bpf.c comes in kinds by what the kernel has, and this kernel has
everything, so each kind is tried here: its loops (PASSES) as may_goto loops
(Linux 6.9) or bounded ones, a thread's syscall state (active_io) in task
storage (Linux 5.11 with BTF) or an LRU hash. Each kind must load, every program
that counts in the kernel among them, and count a request the same way (its
path up to '?', its Host, its status: read from the sends' buffers, which the
syscall state holds)."""

from __future__ import annotations

import subprocess

import pytest

from harness import PythonServer, wait_until
from otel_ebpf.model import KernelEvent, RedCount, Role
from otel_ebpf.receivers.sockets import (
    SocketReceiver,
    kernel_has_may_goto,
    kernel_has_task_storage,
)


@pytest.mark.parametrize(
    ("may_goto", "task_storage"),
    [(True, True), (False, True), (True, False)],
    ids=["may_goto", "bounded", "lru_thread_state"],
)
def test_every_kind_loads_and_counts_alike(
    may_goto: bool, task_storage: bool, py_server: PythonServer
) -> None:
    assert kernel_has_may_goto() and kernel_has_task_storage()  # this kernel: all are tried
    events: list[KernelEvent] = []
    receiver = SocketReceiver(
        events.append, ring_buffer_pages=64, may_goto=may_goto, task_storage=task_storage
    )
    receiver.start()
    try:
        assert receiver.not_counted_in_kernel == {}
        assert receiver.counted_in_kernel == [
            "HTTP/1 requests",
            "Redis commands",
            "PostgreSQL queries",
        ]
        counts: list[RedCount] = []
        url = f"http://127.0.0.1:{py_server.port}/loops/kind?of=loop"
        curl = ["curl", "-s", "-o", "/dev/null", "-H", "Host: loops.test", url]
        subprocess.run(curl, check=True, timeout=10)

        def counted() -> bool:
            receiver.poll()
            counts.extend(receiver.take_red_counts())
            return {c.role for c in counts if c.port == py_server.port} == {
                Role.CLIENT,
                Role.SERVER,
            }

        wait_until(counted, 10, "curl's request counted at both ends")
    finally:
        receiver.close()
    ends = {c.role: c for c in counts if c.port == py_server.port}
    server, client = ends[Role.SERVER], ends[Role.CLIENT]
    assert (server.method, server.path, server.status, server.requests) == (
        "GET",
        "/loops/kind",
        200,
        1,
    )
    assert (client.method, client.host, client.status, client.requests) == (
        "GET",
        "loops.test",
        200,
        1,
    )
