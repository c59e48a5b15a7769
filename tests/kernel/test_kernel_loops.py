"""bpf/sockets.bpf.c comes in kinds by what the kernel has, and this kernel has
everything, so each kind is tried here: its loops (PASSES) as may_goto loops
(Linux 6.9) or bounded ones, a thread's syscall state (active_io) in task
storage (BTF, and its helpers allowed in tracepoints) or an LRU hash. Each kind
must load, every program that counts in the kernel among them, and count a
request the same way (its path up to '?', its Host, its status: read from the
sends' buffers, which the syscall state holds), over TLS too (the plaintext
from the OpenSSL uprobes)."""

from __future__ import annotations

import subprocess

import pytest
from test_tls import ssl_library

from harness import PythonServer, wait_until
from otel_ebpf.model import DataEvent, KernelEvent, RedCount, Role
from otel_ebpf.receivers.sockets import (
    SocketReceiver,
    kernel_has_may_goto,
    kernel_has_task_storage,
)

KINDS = pytest.mark.parametrize(
    ("may_goto", "task_storage"),
    [(True, True), (False, True), (True, False)],
    ids=["may_goto", "bounded", "lru_thread_state"],
)


@KINDS
def test_every_kind_loads_and_counts_alike(
    may_goto: bool, task_storage: bool, py_server: PythonServer
) -> None:
    counts_alike(may_goto, task_storage, "http", py_server.port)


@KINDS
def test_every_kind_counts_https_alike(
    may_goto: bool, task_storage: bool, tls_server: PythonServer
) -> None:
    counts_alike(may_goto, task_storage, "https", tls_server.port)


def counts_alike(may_goto: bool, task_storage: bool, scheme: str, port: int) -> None:
    """curl's request to `port` counted at both ends by programs of this kind."""
    assert kernel_has_may_goto() and kernel_has_task_storage()  # this kernel: all are tried
    receiver = SocketReceiver(
        lambda _: None, ring_buffer_pages=64, may_goto=may_goto, task_storage=task_storage
    )
    receiver.start()
    try:
        assert receiver.not_counted_in_kernel == {}
        assert receiver.counted_in_kernel == [
            "HTTP/1 requests",
            "Redis commands",
            "PostgreSQL queries",
        ]
        if scheme == "https":  # curl and the Python server both on the system libssl
            assert receiver.attach_openssl(ssl_library())
        counts: list[RedCount] = []
        url = f"{scheme}://127.0.0.1:{port}/loops/kind?of=loop"
        curl = ["curl", "-sk", "-o", "/dev/null", "-H", "Host: loops.test", url]
        subprocess.run(curl, check=True, timeout=10)

        def counted() -> bool:
            receiver.poll()
            counts.extend(receiver.take_red_counts())
            return {c.role for c in counts if c.port == port} == {Role.CLIENT, Role.SERVER}

        wait_until(counted, 10, "curl's request counted at both ends")
    finally:
        receiver.close()
    ends = {c.role: c for c in counts if c.port == port}
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


def test_nothing_is_counted_in_the_kernel_unless_asked(py_server: PythonServer) -> None:
    """Without a metrics pipeline no counter is loaded, and the transfer probes,
    which note HTTP/1 requests themselves once one is, note none: a request
    noted in the kernel is left out of its span's count."""
    events: list[KernelEvent] = []
    receiver = SocketReceiver(events.append, ring_buffer_pages=64, count_http=False)
    receiver.start()
    try:
        assert receiver.counted_in_kernel == []
        url = f"http://127.0.0.1:{py_server.port}/unasked"
        for _ in range(3):  # keep-alive: the second and third on a known connection
            subprocess.run(["curl", "-s", "-o", "/dev/null", url, url], check=True, timeout=10)

        def requests() -> list[DataEvent]:
            receiver.poll()
            return [
                e
                for e in events
                if isinstance(e, DataEvent) and e.payload.startswith(b"GET /unasked")
            ]

        wait_until(lambda: len(requests()) == 12, 10, "6 requests seen at both ends")
        assert not any(e.red_counted for e in requests())
        assert receiver.take_red_counts() == []
    finally:
        receiver.close()
