"""The parsers' loops in bpf/sockets.bpf.c (PASSES) come in two kinds: may_goto
loops where the kernel has them (Linux 6.9), bounded ones where not. This
kernel takes both: each kind must load, every program that counts in the kernel
among them, and count a request the same way (its path up to '?', its Host)."""

from __future__ import annotations

import subprocess

import pytest

from harness import PythonServer, wait_until
from otel_ebpf.model import KernelEvent, RedCount, Role
from otel_ebpf.receivers.sockets import SocketReceiver, kernel_has_may_goto


@pytest.mark.parametrize("may_goto", [True, False], ids=["may_goto", "bounded"])
def test_both_kinds_of_loop_load_and_count_alike(may_goto: bool, py_server: PythonServer) -> None:
    assert kernel_has_may_goto()  # this kernel: both kinds are tried here
    events: list[KernelEvent] = []
    receiver = SocketReceiver(events.append, ring_buffer_pages=64, may_goto=may_goto)
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
