"""The pod and service cache: a list, then a watch that adds, changes and deletes,
and a watch that expired (410) making it list again. A local HTTP server plays the
API server (objects in its format); no kernel."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from otel_ebpf.containers import ContainerRef
from otel_ebpf.kubernetes import KubeMetadata


def pod(name: str, uid: str, ip: str, version: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": version},
        "spec": {"nodeName": "node-1"},
        "status": {"podIP": ip, "containerStatuses": []},
    }


SERVICE = {
    "metadata": {"name": "cart", "namespace": "shop", "resourceVersion": "5"},
    "spec": {"clusterIP": "10.96.0.7"},
}


class FakeApi:
    def __init__(self) -> None:
        self.lists: list[str] = []
        self.watch_events: dict[str, list[dict[str, Any]]] = {
            "pods": [
                {"type": "ADDED", "object": pod("b", "uid-b", "10.0.0.2", "11")},
                {"type": "DELETED", "object": pod("a", "uid-a", "10.0.0.1", "12")},
                {"type": "ERROR", "object": {"code": 410, "reason": "Expired"}},
            ],
            "services": [{"type": "DELETED", "object": SERVICE}],
        }
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                kind = "pods" if self.path.startswith("/api/v1/pods") else "services"
                self.send_response(200)
                self.end_headers()
                if "watch=1" in self.path:
                    for event in api.watch_events[kind]:
                        self.wfile.write(json.dumps(event).encode() + b"\n")
                    api.watch_events[kind] = []  # later watches see nothing new
                    time.sleep(0.2)
                    return
                api.lists.append(kind)
                items = [pod("a", "uid-a", "10.0.0.1", "10")] if kind == "pods" else [SERVICE]
                if kind == "pods" and api.lists.count("pods") > 1:
                    items = [pod("b", "uid-b", "10.0.0.2", "13")]
                body = {"metadata": {"resourceVersion": "10"}, "items": items}
                self.wfile.write(json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.server.shutdown()


def eventually(check: Any) -> None:
    for _ in range(200):  # polls, 50 ms apart
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("the cache never caught up")


def test_list_then_watch_then_relist_after_expiry(api: FakeApi) -> None:
    kube = KubeMetadata(api.url, node="node-1")
    kube.start()
    try:
        eventually(lambda: api.lists.count("pods") >= 2)  # the 410 made it list again
        eventually(lambda: kube.pod("uid-b") is not None and kube.pod("uid-a") is None)
        eventually(lambda: kube.name_of_address("10.96.0.7") is None)  # service deleted
        assert kube.name_of_address("10.0.0.2") == "b"  # a pod's IP: its name
        attrs, service = kube.identity(ContainerRef("c" * 64, "uid-b", "containerd", "/"))
        assert attrs["k8s.pod.name"] == "b" and service is None
    finally:
        kube.stop()
