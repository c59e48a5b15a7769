"""Pods on one machine without a cluster: real cgroups named the way containerd,
CRI-O and Docker name them, real network namespaces, and a stub Kubernetes API
server.

The stub serves `k8s/pods.json` and a ServiceList: objects in the API server's own
format (what `kubectl get pods -o json` returns), written for these tests rather
than recorded from a live cluster; the watch it answers stays open and silent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import (
    HERE,
    CollectorProcess,
    Jaeger,
    NetnsHosts,
    end_process,
    file_resource_spans,
    free_port,
    gateway_collector,
    listening,
    wait_until,
)

PODS = json.loads((HERE / "k8s" / "pods.json").read_text())
SERVICES = {
    "kind": "ServiceList",
    "apiVersion": "v1",
    "metadata": {"resourceVersion": "48300"},
    "items": [
        {
            "metadata": {"name": "shop-web", "namespace": "shop", "resourceVersion": "48290"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
        }
    ],
}
WEB, DB = PODS["items"][0], PODS["items"][1]
WEB_CID = WEB["status"]["containerStatuses"][0]["containerID"].rpartition("/")[2]
DB_CID = DB["status"]["containerStatuses"][0]["containerID"].rpartition("/")[2]
DOCKER_CID = "d" * 64
CGROUPS = Path("/sys/fs/cgroup")
# the web pod's container: containerd, systemd cgroup driver, cgroup v2
WEB_CGROUP = (
    CGROUPS
    / "unified"
    / "kubepods.slice"
    / "kubepods-burstable.slice"
    / f"kubepods-burstable-pod{WEB['metadata']['uid'].replace('-', '_')}.slice"
    / f"cri-containerd-{WEB_CID}.scope"
)


class StubApiServer:
    """GET /api/v1/pods and /api/v1/services: the list, or a watch that stays open."""

    def __init__(self) -> None:
        stop = self.stop_event = threading.Event()
        self.requests: list[str] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                requests.append(self.path)
                body = PODS if self.path.startswith("/api/v1/pods") else SERVICES
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if "watch=1" in self.path:
                    self.end_headers()
                    self.wfile.flush()
                    stop.wait(60)  # nothing changes; the client resumes when it ends
                    return
                data = json.dumps(body).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stop_event.set()
        self.server.shutdown()


class ServerInCgroup:
    """The test HTTP server started inside a cgroup (no OTEL_SERVICE_NAME: the
    Kubernetes rules name it)."""

    def __init__(self, cgroup: Path) -> None:
        cgroup.mkdir(parents=True, exist_ok=True)
        self.cgroup = cgroup
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        script = f"echo $$ > {cgroup}/cgroup.procs && exec {sys.executable} {HERE / 'py_http_server.py'} {self.port}"
        self.proc = subprocess.Popen(["sh", "-c", script], env=env)
        wait_until(lambda: listening(self.port), 10, "server in its cgroup")

    def stop(self) -> None:
        end_process(self.proc)
        path = self.cgroup
        while path != CGROUPS and path.parent != CGROUPS:  # leaf first, up to the hierarchy
            try:
                path.rmdir()
            except OSError:
                break
            path = path.parent


@pytest.fixture
def stub_api() -> Iterator[StubApiServer]:
    server = StubApiServer()
    yield server
    server.stop()


def resources_by_port(path: Path) -> dict[int, dict[str, Any]]:
    """Resource attributes of the SERVER spans, by the port they served."""
    out: dict[int, dict[str, Any]] = {}
    for rs in file_resource_spans(path):
        resource = {a["key"]: next(iter(a["value"].values())) for a in rs["resource"]["attributes"]}
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                attrs = {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}
                if span["kind"] == 2 and "server.port" in attrs:
                    out[int(attrs["server.port"])] = resource
    return out


def test_container_and_pod_identity_from_cgroups_and_the_api(
    tmp_path: Path, stub_api: StubApiServer
) -> None:
    web_uid, db_uid = WEB["metadata"]["uid"], DB["metadata"]["uid"]
    servers = {
        "web": ServerInCgroup(WEB_CGROUP),
        # CRI-O, cgroupfs driver, cgroup v1
        "db": ServerInCgroup(
            CGROUPS / "pids" / "kubepods" / "besteffort" / f"pod{db_uid}" / f"crio-{DB_CID}"
        ),
        # Docker outside Kubernetes, cgroup v1
        "docker": ServerInCgroup(CGROUPS / "pids" / "docker" / DOCKER_CID),
    }
    out = tmp_path / "spans.jsonl"
    collector = CollectorProcess(
        tmp_path / "collector",
        {"file": {"path": str(out)}},
        extra_env={"OTEL_EBPF_KUBE_API": stub_api.url, "OTEL_EBPF_KUBE_NODE_NAME": "node-1"},
    )
    try:
        for server in servers.values():
            subprocess.run(
                ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{server.port}/x"], check=True
            )
        ports = {name: s.port for name, s in servers.items()}
        wait_until(
            lambda: set(ports.values()) <= set(resources_by_port(out)), 30, "three servers' spans"
        )
    finally:
        collector.stop()
        for server in servers.values():
            server.stop()
    found = resources_by_port(out)
    web, db, docker = (found[ports[n]] for n in ("web", "db", "docker"))
    assert web["container.id"] == WEB_CID and web["k8s.pod.uid"] == web_uid
    assert web["k8s.pod.name"] == "web-7d4b9c8f6d-x2x9q" and web["k8s.namespace.name"] == "shop"
    assert web["k8s.deployment.name"] == "web" and web["k8s.node.name"] == "node-1"
    assert web["k8s.container.name"] == "web"
    assert (web["container.image.name"], web["container.image.tag"]) == (
        "registry.example/shop/web",
        "1.4.2",
    )
    assert web["service.name"] == "shop-web"  # the app.kubernetes.io/name label
    assert db["container.id"] == DB_CID and db["k8s.pod.uid"] == db_uid
    assert db["k8s.statefulset.name"] == "db" and db["service.name"] == "db"  # the owner
    assert docker["container.id"] == DOCKER_CID and "k8s.pod.uid" not in docker
    assert any(
        r.startswith("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1") for r in stub_api.requests
    )


def test_pod_identity_arrives_through_a_collector_gateway(
    tmp_path: Path, stub_api: StubApiServer
) -> None:
    """The same pod's server span, exported over OTLP to the gateway of
    deploy/examples/ and found in Jaeger: its resource attributes intact."""
    web_uid = WEB["metadata"]["uid"]
    web = ServerInCgroup(WEB_CGROUP)
    jaeger = Jaeger(tmp_path / "jaeger")
    gateway_in = free_port()
    gateway = gateway_collector(tmp_path / "gateway", jaeger, gateway_in)
    collector = CollectorProcess(
        tmp_path / "collector",
        {"otlp": {"endpoint": f"127.0.0.1:{gateway_in}", "insecure": True}},
        extra_env={"OTEL_EBPF_KUBE_API": stub_api.url, "OTEL_EBPF_KUBE_NODE_NAME": "node-1"},
    )
    try:
        start_us = time.time_ns() // 1000
        url = f"http://127.0.0.1:{web.port}/status/500"  # an error: tail sampling keeps it
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
        found = jaeger.search("shop-web", start_us, 1, limit=10)
        trace = jaeger.trace(found[0]["traceID"])
    finally:
        collector.stop()
        gateway.stop()
        jaeger.stop()
        web.stop()
    process = next(p for p in trace["processes"].values() if p["serviceName"] == "shop-web")
    tags = {t["key"]: t["value"] for t in process["tags"]}
    assert tags["container.id"] == WEB_CID and tags["k8s.pod.uid"] == web_uid, tags
    assert tags["k8s.pod.name"] == "web-7d4b9c8f6d-x2x9q" and tags["k8s.namespace.name"] == "shop"
    assert tags["k8s.deployment.name"] == "web" and tags["k8s.node.name"] == "node-1"
    assert tags["container.image.name"] == "registry.example/shop/web"


def test_sidecar_mode_traces_its_own_pod_and_not_the_neighbours(tmp_path: Path) -> None:
    """Two "pods" = two network namespaces, each with a server and a client on its
    loopback; the sidecar is scoped to the first one."""
    hosts = NetnsHosts("sc")
    out = tmp_path / "spans.jsonl"
    mine, neighbour = free_port(), free_port()
    servers = [
        hosts.run(ns, [sys.executable, str(HERE / "py_http_server.py"), str(port)])
        for ns, port in ((hosts.client_ns, mine), (hosts.server_ns, neighbour))
    ]
    collector = CollectorProcess(
        tmp_path / "collector",
        {"file": {"path": str(out)}},
        extra_env={
            "OTEL_EBPF_MODE": "sidecar",
            "OTEL_EBPF_SIDECAR_NETNS": f"/var/run/netns/{hosts.client_ns}",
        },
    )
    try:
        time.sleep(1.0)  # the servers listening in their namespaces
        for ns, port in ((hosts.client_ns, mine), (hosts.server_ns, neighbour)):
            for _ in range(3):
                curl = ["curl", "-s", "--retry", "5", "--retry-connrefused", "-o", "/dev/null"]
                assert hosts.run(ns, [*curl, f"http://127.0.0.1:{port}/x"]).wait(30) == 0
        wait_until(lambda: mine in resources_by_port(out), 30, "the sidecar's own pod's spans")
        time.sleep(2.0)  # the neighbour's would have arrived by now
    finally:
        collector.stop()
        for server in servers:
            end_process(server)
        hosts.close()
    ports = resources_by_port(out)
    assert mine in ports and neighbour not in ports
