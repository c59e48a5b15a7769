"""otel-ebpf in the pipelines users deploy, with a real OpenTelemetry Collector
(scripts/build-otelcol.sh) running deploy/examples/ as shipped, and real Jaeger.

- Node mode: otel-ebpf -> a gateway (gateway-collector.yaml) -> Jaeger. The demo's
  three tiers (an SDK-instrumented frontend reporting through otel-ebpf, an
  uninstrumented backend and downstream) answer ok and failing requests. The
  gateway tail-samples (every error trace, half of the rest by trace id),
  computes span metrics and the service graph from every span, and exposes them
  with otel-ebpf's own RED metrics on one Prometheus endpoint.
- Scaled out: two otel-ebpf sidecars in two network namespaces (two "nodes": an
  SDK-instrumented client in one, an uninstrumented server in the other), each
  exporting to a load balancer (gateway-loadbalancer.yaml) that routes by trace
  id to two gateway replicas, each exporting to its own Jaeger. A trace has spans
  from both sidecars and must land whole on one replica.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo import Frontend, check_tree, load, warm_up
from demo import loadgen as copy_loadgen
from harness import (
    HERE,
    CollectorProcess,
    Jaeger,
    NetnsHosts,
    Otelcol,
    PythonServer,
    end_process,
    free_port,
    gateway_collector,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
LOADBALANCER_CONFIG = REPO / "deploy" / "examples" / "gateway-loadbalancer.yaml"
OK, FAILING = 40, 20
RED_COUNT = "http_server_request_duration_seconds_count"  # otel-ebpf's, counted in the kernel
CALLS = "traces_span_metrics_calls_total"  # the gateway's, from the spans it received
GRAPH_COUNT = "traces_service_graph_request_total"  # ours and the gateway's connector's


@pytest.fixture(scope="module")
def gateway_jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    server = Jaeger(tmp_path_factory.mktemp("gateway-jaeger"))
    yield server
    server.stop()


def prometheus_samples(port: int) -> list[Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list[Any], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_node_collector_through_a_collector_gateway(
    tmp_path: Path, gateway_jaeger: Jaeger, redis: int
) -> None:
    jaeger = gateway_jaeger
    prometheus, gateway_in = free_port(), free_port()
    gateway = gateway_collector(tmp_path / "gateway", jaeger, gateway_in, prometheus)
    downstream = PythonServer("downstream")
    backend = PythonServer(
        "backend", script="py_proxy_server.py", args=(str(downstream.port), str(redis))
    )
    collector = CollectorProcess(
        tmp_path / "collector",
        {"otlp": {"endpoint": f"127.0.0.1:{gateway_in}", "insecure": True}},
        extra_env={"OTEL_EBPF_EXCLUDE_EXE": "demo-loadgen", "OTEL_METRIC_EXPORT_INTERVAL": "1000"},
        otlp_in=True,
        metrics=["otlp"],
    )
    ab = copy_loadgen(tmp_path)
    frontend = Frontend("frontend", backend.port, downstream.port, collector, True)
    try:
        warm_up(ab, frontend, collector)
        start_us = time.time_ns() // 1000
        load(ab, frontend.port, OK, 1)
        load(ab, frontend.port, FAILING, 1, query="fail=1")
        end_us = time.time_ns() // 1000 + 1
        url = f"/api/traces?service=downstream&start={start_us}&end={end_us}&limit=1000"

        def errors_found() -> int:
            return sum(1 for t in jaeger.api(url)["data"] if failed(t))

        wait_until(lambda: errors_found() >= FAILING, 90, "every error trace in Jaeger")
        time.sleep(3)  # a late or split trace would show by now
        traces = [jaeger.trace(t["traceID"]) for t in jaeger.api(url)["data"]]
        # Span metrics (a new series starts at 0 for one flush) and our RED metrics,
        # once both have every request the backend served.
        counts: dict[str, tuple[float, float]] = {}

        def metrics_complete() -> bool:
            samples = prometheus_samples(prometheus)
            for service in ("backend", "downstream"):
                counts[service] = (
                    total(samples, RED_COUNT, service_name=service, job=service),
                    total(samples, CALLS, service_name=service, span_kind="SPAN_KIND_SERVER"),
                )
            return min(counts["backend"]) >= OK + FAILING

        wait_until(metrics_complete, 60, "span metrics and RED metrics at the gateway")
        time.sleep(4)  # two more flushes: nothing else arrives
        metrics_complete()
        graph: dict[tuple[str, str], float] = {}
        for sample in prometheus_samples(prometheus):  # the connector's: labelled `failed`
            if sample.name == GRAPH_COUNT and "failed" in sample.labels:
                edge = (sample.labels["client"], sample.labels["server"])
                graph[edge] = graph.get(edge, 0) + sample.value
    finally:
        frontend.stop()
        assert collector.stop() == 0
        backend.stop()
        downstream.stop()
        gateway.stop()
    wrong = [problem for t in traces if (problem := check_tree(t, "frontend", sdk=True))]
    assert wrong == [], wrong  # every trace kept is whole: the SDK's spans and otel-ebpf's
    errors = sum(1 for t in traces if failed(t))
    assert errors == FAILING  # tail sampling kept every error trace
    kept_ok = len(traces) - errors
    assert 0 < kept_ok < OK, kept_ok  # and dropped some of the rest, whole

    for service, (red, calls) in counts.items():  # the gateway's span metrics agree with ours
        assert abs(calls - red) <= 0.03 * red, (service, red, calls)
    # its service graph pairs our CLIENT and SERVER spans
    assert graph[("frontend", "backend")] >= OK + FAILING, graph

    backend_spans = next(
        p for t in traces for p in t["processes"].values() if p["serviceName"] == "backend"
    )
    tags = {t["key"]: t["value"] for t in backend_spans["tags"]}
    assert tags["host.name"] == socket.gethostname(), tags  # resource attributes intact
    assert str(tags["process.pid"]) == str(backend.proc.pid), tags
    assert tags["telemetry.distro.name"] == "otel-ebpf", tags
    print(
        f"\ngateway: {errors} of {FAILING} error traces kept, {kept_ok} of {OK} others; "
        f"server requests (our RED, span metrics): {counts}"
    )


def failed(trace: dict[str, Any]) -> bool:
    return any(
        t["key"] == "http.response.status_code" and str(t["value"]) == "500"
        for s in trace["spans"]
        for t in s["tags"]
    )


@pytest.fixture
def hosts() -> Iterator[NetnsHosts]:
    h = NetnsHosts("gw")
    yield h
    h.close()


class SdkClient:
    """sdk_client.py in the client host: requests on command, their trace ids back."""

    def __init__(self, hosts: NetnsHosts, base_url: str, otlp_endpoint: str) -> None:
        env = {
            **os.environ,
            "OTEL_SERVICE_NAME": "client-a",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }
        argv = [sys.executable, str(HERE / "sdk_client.py"), base_url]
        self.proc = hosts.run(
            hosts.client_ns, argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def requests(self, kind: str, n: int) -> list[tuple[str, int]]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{kind} {n}\n".encode())
        self.proc.stdin.flush()
        made = []
        while (line := self.proc.stdout.readline().decode().split()) != ["done"]:
            assert line, "sdk_client.py ended early"
            made.append((line[0], int(line[1])))
        return made

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()  # it flushes its spans and exits
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            end_process(self.proc)


def find(jaeger: Jaeger, trace_id: str) -> dict[str, Any] | None:
    try:
        data = jaeger.api(f"/api/traces/{trace_id}").get("data") or []
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    return dict(data[0]) if data else None


def whole(trace: dict[str, Any]) -> bool:
    """The client's root and CLIENT spans (its SDK's, through sidecar a) and the
    server's SERVER span (sidecar b's, from the traceparent it received), as a tree."""
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    kind = {
        s["spanID"]: next((t["value"] for t in s["tags"] if t["key"] == "span.kind"), "internal")
        for s in trace["spans"]
    }
    shape = sorted((services[s["processID"]], kind[s["spanID"]]) for s in trace["spans"])
    if shape != [("client-a", "client"), ("client-a", "internal"), ("server-b", "server")]:
        return False
    server = next(s for s in trace["spans"] if kind[s["spanID"]] == "server")
    return any(kind.get(r["spanID"]) == "client" for r in server["references"])


def test_sidecars_on_two_nodes_through_load_balanced_gateways(
    tmp_path: Path, hosts: NetnsHosts
) -> None:
    jaegers = [Jaeger(tmp_path / f"jaeger-{i}") for i in range(2)]
    replica_ports = [free_port(), free_port()]
    started: list[Any] = list(jaegers)
    try:
        started += [
            gateway_collector(tmp_path / f"gateway-{i}", jaegers[i], replica_ports[i])
            for i in range(2)
        ]
        replicas = "[" + ", ".join(f"127.0.0.1:{p}" for p in replica_ports) + "]"
        sidecars = []
        for number, ns in enumerate((hosts.client_ns, hosts.server_ns), start=1):
            host_ip, ns_ip = hosts.uplink(ns, number)
            balancer = free_port()
            started.append(
                Otelcol(
                    tmp_path / f"balancer-{ns}",
                    LOADBALANCER_CONFIG,
                    {
                        "LOADBALANCER_OTLP_GRPC_ENDPOINT": f"{host_ip}:{balancer}",
                        "GATEWAY_REPLICAS": replicas,
                        "GATEWAY_OTLP_ENDPOINT": f"127.0.0.1:{replica_ports[0]}",
                    },
                )
            )
            sidecar = CollectorProcess(
                tmp_path / f"sidecar-{ns}",
                {"otlp": {"endpoint": f"{host_ip}:{balancer}", "insecure": True}},
                extra_env={"OTEL_EBPF_MODE": "sidecar"},
                otlp_in=True,
                netns=ns,
                host=ns_ip,
            )
            sidecars.append(sidecar)
            started.append(sidecar)
        port = free_port()
        server_argv = [sys.executable, str(HERE / "py_http_server.py"), str(port), hosts.server_ip]
        server = hosts.run(
            hosts.server_ns, server_argv, env={**os.environ, "OTEL_SERVICE_NAME": "server-b"}
        )
        client = SdkClient(
            hosts,
            f"http://{hosts.server_ip}:{port}",
            f"http://{sidecars[0].host}:{sidecars[0].otlp_grpc_port}",
        )
        try:
            probe = [
                sys.executable,
                str(HERE / "netns_client.py"),
                hosts.server_ip,
                str(port),
                "/",
                "1",
            ]
            wait_until(
                lambda: hosts.run(hosts.client_ns, probe, stderr=subprocess.DEVNULL).wait(10) == 0,
                15,
                "the server answers",
            )
            for attempt in range(4):  # until sidecar a merges its eBPF span into the SDK's
                client.requests("ok", 5)
                try:
                    wait_until(
                        lambda: sidecars[0].telemetry()["spans_merged_away"] > 0, 15, "a merge"
                    )
                    break
                except AssertionError:
                    if attempt == 3:
                        raise
            made = client.requests("ok", OK) + client.requests("fail", FAILING)
        finally:
            client.close()
            end_process(server)
        failing = [trace_id for trace_id, status in made if status == 500]
        assert len(failing) == FAILING

        def located(trace_id: str) -> list[tuple[int, dict[str, Any]]]:
            return [(i, t) for i, j in enumerate(jaegers) if (t := find(j, trace_id))]

        def errors_whole() -> bool:
            return all(len(p) == 1 and whole(p[0][1]) for p in map(located, failing))

        wait_until(errors_whole, 90, "every error trace whole on one replica")
        time.sleep(3)  # a late or split trace would show by now
        where = {trace_id: located(trace_id) for trace_id, _ in made}
    finally:
        exits = []  # every process is stopped before any exit is judged: none outlives the test
        for process in reversed(started):
            if isinstance(process, CollectorProcess):
                exits.append(process.stop())
            else:
                process.stop()
        assert exits == [0] * len(exits), exits
    split = [
        t for t, places in where.items() if len(places) > 1 or not all(whole(p[1]) for p in places)
    ]
    assert split == [], split  # each trace kept is whole, on one replica
    kept_ok = sum(1 for t, places in where.items() if places and t not in failing)
    assert 0 < kept_ok < OK, kept_ok  # the rest kept or dropped whole, by trace id
    replicas_used = {places[0][0] for places in where.values() if places}
    assert replicas_used == {0, 1}, replicas_used  # routed to both
    print(
        f"\nload-balanced: {FAILING} error traces and {kept_ok} of {OK} others, whole, on one replica each"
    )
